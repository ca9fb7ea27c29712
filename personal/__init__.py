"""personal/ — floor 2: the device. Vault, events to examples, base models, DP-LoRA, suggest/ask, labels, app SDK.

May import privacy/ only.
"""
