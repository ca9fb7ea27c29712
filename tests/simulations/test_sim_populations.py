"""Populations: the synthetic generator (seeded, ground truth), selection, the bundled datasets, a user's file."""

from __future__ import annotations

import pytest

from privacy.errors import HomebodyError
from simulations.populations import (
    EmptyPopulation,
    SyntheticConfig,
    UnknownDataset,
    foursquare_nyc,
    group_of,
    load_population,
    select_devices,
    shakespeare,
    summary,
    synthetic,
)
from tests.conftest import require_dataset


def test_synthetic_is_seeded_and_keeps_ground_truth():
    a = synthetic(SyntheticConfig(devices=12, seed=3))
    b = synthetic(SyntheticConfig(devices=12, seed=3))
    c = synthetic(SyntheticConfig(devices=12, seed=4))
    assert [(e.user, e.timestamp, e.event) for d in a.devices for e in d.events] == \
           [(e.user, e.timestamp, e.event) for d in b.devices for e in d.events]
    assert [len(d) for d in a.devices] != [len(d) for d in c.devices]
    for dev in a.devices:
        assert len(dev.planted) == len(dev.events)
        assert all(x.timestamp <= y.timestamp for x, y in zip(dev.events, dev.events[1:]))
        # every weekly-routine event is one of the owner's planted routines, on a planted weekday
        routines = {r.event: r for r in a.routines[dev.user]}
        for ev, kind in zip(dev.events, dev.planted):
            if kind == "weekly":
                r = routines[ev.event]
                assert abs((ev.timestamp.hour + ev.timestamp.minute / 60) - (r.hour + r.minute / 60)) < 1.5
    # heterogeneous activity with some cold-start owners
    big = synthetic(SyntheticConfig(devices=60, seed=0))
    sizes = [len(d) for d in big.devices]
    assert any(d.cold_start for d in big.devices) and max(sizes) > 4 * min(sizes)
    assert sum(k == "weekly" for d in big.devices for k in d.planted) > 100


def test_selection_takes_the_largest_devices_deterministically():
    pop = synthetic(SyntheticConfig(devices=20, seed=1))
    top = select_devices(pop, 5)
    sizes = sorted((len(d) for d in pop.devices), reverse=True)
    assert [len(d) for d in top.devices] == sizes[:5]
    assert [d.user for d in select_devices(pop, 5).devices] == [d.user for d in top.devices]
    drawn = select_devices(pop, 5, sample=True, seed=7)
    assert [d.user for d in drawn.devices] == [d.user for d in select_devices(pop, 5, sample=True, seed=7).devices]
    assert set(top.routines) == {d.user for d in top.devices}
    assert len(select_devices(pop, 1000).devices) == 20
    with pytest.raises(EmptyPopulation):
        select_devices(pop, 0)


def test_cold_start_draw_guarantees_the_cold_start_group():
    pop = synthetic(SyntheticConfig(devices=40, seed=3))
    cold = [d for d in pop.devices if group_of(d) == "cold-start"]
    assert len(cold) >= 3 and not any(group_of(d) == "cold-start" for d in select_devices(pop, 10).devices)
    for sample in (False, True):
        drawn = select_devices(pop, 10, sample=sample, seed=5, cold_start=3)
        groups = [group_of(d) for d in drawn.devices]
        assert len(drawn.devices) == 10 and len({d.user for d in drawn.devices}) == 10
        assert groups.count("cold-start") >= 3
        again = select_devices(pop, 10, sample=sample, seed=5, cold_start=3)
        assert [d.user for d in again.devices] == [d.user for d in drawn.devices]
    with pytest.raises(EmptyPopulation, match="cold-start devices"):
        select_devices(pop, 10, cold_start=len(cold) + 1)


def test_unknown_dataset_is_one_clear_error():
    with pytest.raises(UnknownDataset) as info:
        load_population("mnist")
    assert isinstance(info.value, HomebodyError) and "synthetic" in str(info.value)


def test_foursquare_loads_all_users_with_local_time(data_root):
    require_dataset(data_root, "foursquare_nyc")
    pop = foursquare_nyc(data_root)
    s = summary(pop)
    assert s["devices"] == 1082 and s["events"] == 113_344
    assert 150 <= s["labels"] <= 205
    first = pop.devices[0].events[0]  # user 0's first check-in: local 14:00 on a Sunday (dow 6)
    assert (first.timestamp.hour, first.timestamp.weekday()) == (14, 6)
    assert first.event == "General Entertainment"


def test_shakespeare_one_device_per_role(data_root):
    require_dataset(data_root, "shakespeare_roles")
    pop = shakespeare(data_root, min_chars=10_000)
    assert 40 <= len(pop.devices) <= 60
    dev = pop.devices[0]
    assert all(e.text for e in dev.events) and dev.events[0].timestamp < dev.events[-1].timestamp


def test_text_only_population_is_refused_with_one_clear_error(data_root, tmp_path):
    require_dataset(data_root, "shakespeare_roles")
    from simulations.runner import BadSimulationConfig, SimulationConfig, run_simulation

    with pytest.raises(BadSimulationConfig) as info:
        run_simulation(SimulationConfig(dataset="shakespeare", devices=3, model="tiny", out=str(tmp_path)))
    assert "next event" in str(info.value) and not (tmp_path / "results.json").exists()
