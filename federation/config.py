"""`FederationConfig`: every knob of a federated run in one small dataclass.

The CLI builds it from flags, the Flower apps from the run config (`to_record` /
`from_record` keep it flat so that it travels in a Flower `ConfigRecord`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from privacy.errors import HomebodyError

MODES = ("device", "secagg", "central")
ENCODINGS = ("fp32", "fp16", "int8")
MODELS = ("lora", "habit-scorer")
# The step size of a device's local habit-scorer steps (chosen on the foursquare validation split;
# FederationConfig.local_lr's 5e-3 suits the LoRA adapter and barely moves the scorer).
SCORER_LOCAL_LR = 1.0


class FederationConfigError(HomebodyError):
    """A federation setting is out of range or unknown."""


class FederationSetupError(HomebodyError):
    """A federation run cannot start or finish: a ClientApp cannot find its device (raised inside
    Flower, which reports it to the server), or a Flower simulation failed."""


@dataclass(frozen=True)
class FederationConfig:
    """Settings shared by the server and every device of one federated run.

    These defaults are the one source of `homebody federate run`'s options and of pyproject's
    `[tool.flwr.app.config]` (tests/test_defaults.py fails when either drifts).

    mode: "device" (a: each device adds N(0, (sigma*C)^2) before sending), "secagg"
      (b: devices add a share of the noise, the server sees only the SecAgg+ sum) or
      "central" (c: a trusted server clips and noises; devices send clipped updates).
    clip_norm: C, the L2 bound of one device's update (user-level sensitivity).
    noise_multiplier: sigma; the released noise has standard deviation sigma*C per coordinate.
    amplify: account each round as subsampled at the cohort rate q (valid against observers
      of the global adapters); False accounts q = 1 (valid against the server that picks cohorts).
    straggler_grace: once min_train_devices replied, the others get this fraction of the time
      taken so far (at least 5 s) before the round closes; 0 waits for all (or the timeout).
    model: what the Flower apps federate: "lora" (the shared LoRA adapter) or "habit-scorer" (the
      habit scorer's shared weights, then the usefulness check; `federation.habit_serverapp`).
    secagg_min_devices: mode b only: the fewest devices whose sum the server may see;
      each device adds noise sigma*C/sqrt(secagg_min_devices) so the sum carries sigma*C.
    """

    rounds: int = 3
    mode: str = "device"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    amplify: bool = True
    encoding: str = "fp32"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_devices: int = 2
    min_evaluate_devices: int = 2
    min_available_devices: int = 2
    round_timeout_s: float = 600.0
    straggler_grace: float = 0.0
    server_lr: float = 1.0
    base: str = "tiny"
    local_epochs: int = 1
    local_lr: float = 5e-3
    batch_size: int = 16
    lora_r: int = 8  # LoraSettings' and SimulationConfig's rank (tests/test_defaults.py)
    personal_epochs: int = 1
    history: int = 3
    secagg_min_devices: int = 2
    secagg_num_shares: int = 3
    secagg_threshold: int = 2
    seed: int | None = None
    model: str = "lora"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise FederationConfigError naming the first bad setting."""
        if self.mode not in MODES:
            raise FederationConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.model not in MODELS:
            raise FederationConfigError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.encoding not in ENCODINGS:
            raise FederationConfigError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not self.clip_norm > 0:
            raise FederationConfigError(f"clip_norm must be > 0, got {self.clip_norm}")
        if self.noise_multiplier < 0:
            raise FederationConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise FederationConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.rounds < 1:
            raise FederationConfigError(f"rounds must be >= 1, got {self.rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise FederationConfigError(f"{name} must be in [0, 1], got {value}")
        if self.straggler_grace < 0:
            raise FederationConfigError(f"straggler_grace must be >= 0, got {self.straggler_grace}")
        if self.secagg_num_shares % 2 == 0:
            # Flower's SecAgg+ only warns on an even count, then every client crashes in _share_keys.
            raise FederationConfigError(f"secagg_num_shares must be odd, got {self.secagg_num_shares}")
        if self.secagg_min_devices < 1:
            raise FederationConfigError("secagg_min_devices must be >= 1")

    @property
    def device_sigma(self) -> float:
        """The noise multiplier one device applies before sending (0 in central mode)."""
        if self.mode == "central":
            return 0.0
        if self.mode == "secagg":
            return self.noise_multiplier / self.secagg_min_devices**0.5
        return self.noise_multiplier

    def to_record(self) -> dict[str, Any]:
        """Flat dict of scalars (None dropped) for a Flower ConfigRecord or run config."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "FederationConfig":
        """Inverse of `to_record`; unknown keys are ignored (Flower adds its own)."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in record.items():
            name = str(key).replace("-", "_")
            if name in known:
                values[name] = _coerce(known[name].type, value)
        return cls(**values)

    def with_(self, **changes: Any) -> "FederationConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _coerce(type_name: Any, value: Any) -> Any:
    """Turn a TOML/ConfigRecord scalar into the field's declared type."""
    text = str(type_name)
    if text.startswith("bool"):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if text.startswith("int"):
        return int(value)
    if text.startswith("float"):
        return float(value)
    if text.startswith("str"):
        return str(value)
    return value
