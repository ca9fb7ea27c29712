"""Where a ClientApp finds the device it runs for: a vault (deployment) or a simulated population.

A real device's `device_id` is `federation.device.device_identity` of its vault's key: the
profile name is personal and never leaves the device (not in headers, metrics or decline reasons).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from federation.config import FederationSetupError

if TYPE_CHECKING:
    from flwr.app import Context

    from personal.examples import Example
    from personal.vault import Vault
    from privacy.budget import ReleaseGate
    from privacy.randomness import NoiseSource

PASSPHRASE_ENV = "HOMEBODY_PASSPHRASE"


@dataclass
class DeviceHandle:
    """One device's data and ledger as a ClientApp sees them."""

    device_id: str
    train: list["Example"]
    test: list["Example"]
    gate: "ReleaseGate | None" = None
    profile: str = "default"
    close: Callable[[], None] = lambda: None
    # Which seeded noise stream the device draws from when the federation has a seed. None: its
    # Flower node id. Simulations give the device's index, so every engine draws the same noise.
    noise_stream: int | None = None
    # Only a simulated device may follow the run's seed. A real device always draws from the OS
    # CSPRNG, whatever seed a server puts in the run config: a noise seed known to the server
    # would let it subtract the noise.
    seeded_noise: bool = False
    # The device's own events, chronological (the habit scorer trains on them; never sent) and its
    # vault (where the scorer's final weights are stored). A simulated device without a vault has neither.
    events: list = field(default_factory=list)
    vault: "Vault | None" = None

    def noise_rng(self, seed: int | None, server_round: int, context: "Context") -> "NoiseSource":
        """The device's noise generator for one round (`federation.device.noise_rng`)."""
        from federation.device import noise_rng

        stream = self.noise_stream if self.noise_stream is not None else context.node_id % (2**32)
        return noise_rng(seed if self.seeded_noise else None, server_round, stream)


def run_name(context: "Context") -> str:
    """The run a device's ledger records charge rounds to (Flower's run id)."""
    return f"flower-run-{context.run_id}"


class DeviceSource(Protocol):
    """Where a ClientApp finds the device it runs for."""

    def open(self, context: "Context") -> DeviceHandle: ...


@dataclass
class SimDevice:
    """A simulated device: an id and its chronological examples."""

    device_id: str
    examples: list["Example"]


@dataclass
class PopulationSource:
    """Simulation: node `partition-id` i runs devices[i]; each has its own SQLite ledger in ledger_dir."""

    devices: list[SimDevice]
    ledger_dir: str | None = None
    holdout: float = 0.2
    epsilon_cap: float | None = None

    def open(self, context: "Context") -> DeviceHandle:
        from federation.device import split_examples

        index = int(context.node_config["partition-id"]) % len(self.devices)
        device = self.devices[index]
        train, test = split_examples(device.examples, self.holdout)
        gate, close = (None, lambda: None)
        if self.ledger_dir:
            gate, close = _sim_gate(Path(self.ledger_dir), device.device_id, self.epsilon_cap)
        return DeviceHandle(device.device_id, train, test, gate, device.device_id, close, noise_stream=index,
                            seeded_noise=True)


def _sim_gate(folder: Path, device_id: str, epsilon_cap: float | None) -> tuple["ReleaseGate", Callable[[], None]]:
    """A per-device ledger for a simulated device: its own SQLite file and Ed25519 key
    (and, if given, a user-level policy with that epsilon cap at delta 1e-5). A simulation may run
    seeded for reproducibility, so its gate accepts seeded noise (recorded as such)."""
    import sqlite_utils
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.budget import BudgetPolicy, ReleaseGate

    folder.mkdir(parents=True, exist_ok=True)
    key_path = folder / f"{device_id}.key"
    if not key_path.exists():
        key_path.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
    db = sqlite_utils.Database(folder / f"{device_id}.db")
    gate = ReleaseGate(db, signer=Ed25519PrivateKey.from_private_bytes(key_path.read_bytes()), allow_seeded_noise=True)
    if epsilon_cap is not None:
        gate.set_policy(device_id, "user", BudgetPolicy(epsilon_cap=epsilon_cap, delta=1e-5))
    return gate, db.close


@dataclass
class VaultSource:
    """Deployment: the SuperNode's node config names the vault and profile; the passphrase comes
    from the environment variable named by node config `passphrase-env` (default HOMEBODY_PASSPHRASE).

    The device id is derived from the vault's sealed signing key (`device_identity`), never
    from the profile or a name in the node config: two owners who both kept profile `me` are
    two devices to the server, and the profile name is not sent."""

    history: int = 3
    holdout: float = 0.2

    def open(self, context: "Context") -> DeviceHandle:
        cfg = context.node_config
        env = str(cfg.get("passphrase-env", PASSPHRASE_ENV))
        if env not in os.environ:
            raise FederationSetupError(f"the device's vault passphrase is not in ${env}")
        return open_vault_device(str(cfg["vault"]), os.environ[env], str(cfg.get("profile", "default")),
                                 self.history, self.holdout)


@dataclass(frozen=True)
class VaultRef:
    """Where a simulated device's vault is: path, passphrase and profile."""

    path: str
    passphrase: str
    profile: str = "default"


@dataclass
class VaultPopulationSource:
    """Simulation with real vaults: node `partition-id` i runs vaults[i] (its events, its sealed key,
    its ledger). A simulation may run seeded, so the gate accepts (and records) seeded noise. Its
    devices are named by their profiles, as PopulationSource's and the fast engine's owners are (a
    real device's id is key-derived: VaultSource)."""

    vaults: list[VaultRef]
    history: int = 3
    holdout: float = 0.2
    accountant: str = "rdp"  # as simulations' gates: PLD costs ~1 s per ledger check on 2 cores

    def open(self, context: "Context") -> DeviceHandle:
        index = int(context.node_config["partition-id"]) % len(self.vaults)
        ref = self.vaults[index]
        handle = open_vault_device(ref.path, ref.passphrase, ref.profile, self.history, self.holdout,
                                   seeded=True, accountant=self.accountant)
        handle.noise_stream, handle.device_id = index, ref.profile
        return handle


def open_vault_device(path: str, passphrase: str, profile: str, history: int, holdout: float, seeded: bool = False,
                      accountant: str | None = None) -> DeviceHandle:
    """A DeviceHandle on a vault: its examples (split), events, gate and id (`device_identity`).
    `seeded`: a simulation's device (its gate accepts seeded noise); never for a real one."""
    from federation.device import device_identity, split_examples
    from personal.examples import events_to_examples
    from personal.vault import Vault
    from privacy.budget import ReleaseGate

    vault = Vault.open(path, passphrase)
    try:  # the handle owns the vault from here on; until it exists, a failure must close it
        events = vault.events(profile)
        train, test = split_examples(events_to_examples(events, history=history), holdout)
        signer = vault.signing_key()
        extra = {"accountant": accountant} if accountant else {}
        gate = ReleaseGate(vault.db, signer=signer, allow_seeded_noise=seeded, **extra)
    except BaseException:
        vault.close()
        raise
    return DeviceHandle(device_identity(signer.public_key()), train, test, gate, profile, vault.close,
                        seeded_noise=seeded, events=events, vault=vault)
