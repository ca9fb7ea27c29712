"""Mode (b): SecAgg+ on Flower's legacy API with device-side noise shares (simulation runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from federation.config import FederationConfig, FederationConfigError
from tests.federation.conftest import ACTIVITIES, routine_examples

pytestmark = [pytest.mark.slow]


def test_secagg_round_applies_only_the_checked_sum(flower_env):
    import sqlite_utils
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.sources import SimDevice
    from federation.secagg import run_secagg_simulation
    from privacy.ledger import Ledger

    devices = [SimDevice(f"dev-{i}", routine_examples(i)[1]) for i in range(3)]
    cfg = FederationConfig(mode="secagg", rounds=1, clip_norm=0.5, noise_multiplier=2.0, secagg_min_devices=3,
                           secagg_num_shares=3, secagg_threshold=2, min_train_devices=3, min_available_devices=3, seed=5)
    assert cfg.device_sigma == pytest.approx(2.0 / np.sqrt(3))
    history = run_secagg_simulation(devices, cfg, ACTIVITIES, ledger_dir=str(flower_env / "ledgers"))
    assert [(r.round, r.summed, r.applied) for r in history.rounds] == [(1, 3, True)]
    moved = sum(float(np.abs(history.arrays[k] - history.initial_arrays[k]).sum()) for k in history.arrays)
    assert moved > 0 and all(np.isfinite(v).all() for v in history.arrays.values())
    for d in devices:  # each device recorded the round's release with the noise the SUM carries
        key = Ed25519PrivateKey.from_private_bytes((flower_env / "ledgers" / f"{d.device_id}.key").read_bytes())
        records = Ledger(sqlite_utils.Database(flower_env / "ledgers" / f"{d.device_id}.db"), signer=key).records(
            d.device_id, "user")
        assert [r.mechanism for r in records] == ["dp-fedavg-secagg-share"]
        assert records[0].params["noise_multiplier"] == pytest.approx(2.0)


def test_secagg_refuses_an_even_share_count_and_other_modes():
    with pytest.raises(FederationConfigError, match="odd"):
        FederationConfig(mode="secagg", secagg_num_shares=4)
    from federation.serverapp import ServerSetup
    from federation.secagg import make_secagg_server_app

    with pytest.raises(FederationConfigError, match="secagg"):
        make_secagg_server_app(ServerSetup(FederationConfig(mode="device"), ACTIVITIES))
