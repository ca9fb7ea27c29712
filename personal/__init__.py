"""personal/ — floor 2: the device. Vault, events to examples, base models, DP-LoRA, suggest/ask, labels, app SDK.

May import privacy/ only.
"""


def __getattr__(name: str):
    # Lazy: `from personal import Assistant` must not import torch (or anything heavy) at package import.
    if name == "Assistant":
        from personal.assistant import Assistant

        return Assistant
    raise AttributeError(f"module 'personal' has no attribute {name!r}")
