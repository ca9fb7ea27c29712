"""Simulated devices: each gets its own vault file, sealed like a real one, and its examples.

`prepare_devices` writes every owner's events into a fresh vault (AES-256-GCM, scrypt with the
fast simulation setting, recorded in the file), reads them back through the vault, and turns
them into examples with personal/'s one serialisation. The chronological split is the one the
federation's devices use (last 20% held out), so every engine scores the same held-out events.
It also keeps a `FeatureCache` type the fast engine hands to the shared model: the frozen lower
layers' outputs per example list, in memory up to a budget and on disk beyond it.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import OrderedDict
from collections.abc import MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from simulations.populations import Device, Population, group_of

HOLDOUT = 0.2
GATE_ACCOUNTANT = "rdp"  # PLD costs ~1 s per ledger check on 2 cores; RDP is a valid, slightly looser bound


@dataclass
class SimDevice:
    """One simulated device: where its vault is, its examples, and (synthetic) what was planted."""

    user: str
    vault_path: Path
    passphrase: str
    examples: list  # all examples, chronological (personal.examples.Example)
    train: list
    test: list
    n_events: int
    group: str
    test_kinds: list[str] | None = None  # ground truth per held-out example (synthetic only)
    meta: dict = field(default_factory=dict)
    # The habit statistics' inputs, read back from the vault (they never leave the device): the events
    # before the first held-out next-event example, and one query per held-out next-event example
    # (personal.evaluate.Query), in the order of `test`'s labelled examples.
    habit_train: list = field(default_factory=list)
    habit_queries: list = field(default_factory=list)

    @contextmanager
    def open_gate(self, accountant: str = GATE_ACCOUNTANT) -> Iterator[tuple[object, object]]:
        """(vault, ReleaseGate) of this device, open for the duration of the block. A simulation
        draws seeded noise to be reproducible, so its gate accepts (and records) seeded releases."""
        from personal.vault import Vault
        from privacy.budget import ReleaseGate

        vault = Vault.open(self.vault_path, self.passphrase)
        try:
            yield vault, ReleaseGate(vault.db, signer=vault.signing_key(), accountant=accountant, allow_seeded_noise=True)
        finally:
            vault.close()


def _split(examples: list) -> tuple[list, list]:
    from federation.device import split_examples

    return split_examples(examples, HOLDOUT)


def prepare_device(dev: Device, folder: Path, history: int, max_events: int | None = None,
                   fast_kdf: bool = True) -> SimDevice:
    """Seal one owner's events in a new vault under `folder`, read them back, build examples.
    `fast_kdf`: the vault's scrypt setting (fast: simulation only; the default setting costs ~0.1 s a vault)."""
    from personal.examples import events_to_examples
    from personal.vault import Vault, VaultConfig

    events = dev.events[-max_events:] if max_events else dev.events
    planted = (dev.planted[-max_events:] if max_events else dev.planted) if dev.planted is not None else None
    path = folder / f"{hashlib.sha256(dev.user.encode()).hexdigest()[:16]}.vault"
    if path.exists():
        path.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    passphrase = secrets.token_urlsafe(18)
    with Vault.create(path, passphrase, VaultConfig(fast_kdf=fast_kdf)) as vault:
        vault.add_events(events)
        stored = vault.events(dev.user)
    examples = events_to_examples(stored, history=history)
    train, test = _split(examples)
    kinds = None
    if planted is not None and len(examples) == len(events):  # one example per event (no text events)
        kinds = list(planted[len(train):])
    habit_train, habit_queries = habit_split(stored, examples, len(train))
    return SimDevice(dev.user, path, passphrase, examples, train, test, len(stored), group_of(dev), kinds,
                     habit_train=habit_train, habit_queries=habit_queries)


def habit_split(events: list, examples: list, n_train: int) -> tuple[list, list]:
    """(training events, held-out queries) aligned with the example split: events_to_examples makes a
    next-event example per event, then an LM example for an event with text, so each example maps to
    its event; a query per held-out next-event example, scored from the events before the first one."""
    from personal.evaluate import Query

    owner = [i for i, ev in enumerate(events) for _ in range(2 if ev.text else 1)]
    held = [owner[j] for j in range(n_train, len(examples)) if examples[j].label is not None]
    cut = held[0] if held else len(events)
    return list(events[:cut]), [Query(events[:i], events[i]) for i in held]


def prepare_devices(pop: Population, folder: Path, history: int = 3, max_events: int | None = None,
                    progress: Callable[[int], None] | None = None, fast_kdf: bool = True) -> list[SimDevice]:
    """A vault and examples for every device of the population (see `prepare_device`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for dev in pop.devices:
        out.append(prepare_device(dev, folder, history, max_events, fast_kdf))
        if progress:
            progress(1)
    return out


def quantized_rate(batch_size: int, n: int) -> float:
    """batch/n rounded to a power of two (≤ 1), so few distinct (q, steps) need a noise calibration."""
    if n <= batch_size:
        return 1.0
    return 2.0 ** -round(math.log2(n / batch_size))


def baselines(pop: Population, max_events: int | None = None) -> tuple[dict, dict[str, dict]]:
    """Every counting baseline's top-1/top-5 (personal.evaluate.BASELINES: most frequent, Markov,
    hour, slot, smoothed mix, best counting), macro-averaged over devices.

    Returns (population means, per-user scores).
    """
    from personal.evaluate import BASELINES, baseline_scores, chronological_split

    per_user = {}
    for dev in pop.devices:
        events = dev.events[-max_events:] if max_events else dev.events
        train, queries = chronological_split(events, HOLDOUT)
        per_user[dev.user] = baseline_scores(train, queries)
    means = {}
    for name in BASELINES:
        for k in ("top1", "top5"):
            vals = [s[name][k] for s in per_user.values()]
            means[f"{name}_{k}"] = sum(vals) / len(vals) if vals else 0.0
    return means, per_user


def markov_hits(dev: Device, max_events: int | None = None, baseline: str = "markov") -> list[bool]:
    """Per held-out event: is it the baseline's top-1 (Markov, or "best_counting"; planted-routine comparison)?"""
    from personal.evaluate import COUNTING, BestCounting, chronological_split

    events = dev.events[-max_events:] if max_events else dev.events
    train, queries = chronological_split(events, HOLDOUT)
    model = BestCounting(train) if baseline == "best_counting" else COUNTING[baseline](train)
    return [model.rank(q)[:1] == [q.target.event] for q in queries]


class FeatureCache(MutableMapping):
    """The frozen lower layers' outputs, keyed by (max_length, texts): memory up to `mem_bytes`, then disk.

    The shared base never changes during a simulation, so an example list's features are
    computed once and reused in every later round. Least recently used entries move to
    `folder` as .pt files; reading one brings it back. This keeps peak memory flat in the
    number of devices.
    """

    def __init__(self, folder: Path, mem_bytes: int = 256 * 2**20) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mem_bytes = mem_bytes
        self._mem: OrderedDict[str, tuple] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._disk: set[str] = set()
        self.hits = self.misses = 0

    @staticmethod
    def _digest(key) -> str:
        h = hashlib.sha256(str(key[0]).encode())
        for text in key[1]:
            h.update(b"\0" + text.encode())
        return h.hexdigest()[:32]

    def _path(self, digest: str) -> Path:
        return self.folder / f"{digest}.pt"

    def _evict(self) -> None:
        import torch

        while len(self._mem) > 1 and sum(self._sizes.values()) > self.mem_bytes:  # the newest always stays
            digest, value = self._mem.popitem(last=False)
            self._sizes.pop(digest)
            if digest not in self._disk:
                torch.save(value, self._path(digest))
                self._disk.add(digest)

    def __setitem__(self, key, value) -> None:
        digest = self._digest(key)
        self._mem[digest] = value
        self._sizes[digest] = sum(t.numel() * t.element_size() for t in value)
        self.misses += 1
        self._evict()

    def __getitem__(self, key):
        import torch

        digest = self._digest(key)
        if digest in self._mem:
            self._mem.move_to_end(digest)
            value = self._mem[digest]
        elif digest in self._disk:
            value = self._mem[digest] = torch.load(self._path(digest))
            self._sizes[digest] = sum(t.numel() * t.element_size() for t in value)
            self._evict()
        else:
            raise KeyError(key)
        self.hits += 1
        return value

    def __contains__(self, key) -> bool:
        digest = self._digest(key)
        return digest in self._mem or digest in self._disk

    def __delitem__(self, key) -> None:
        digest = self._digest(key)
        self._mem.pop(digest, None)
        self._sizes.pop(digest, None)
        if digest in self._disk:
            self._path(digest).unlink(missing_ok=True)
            self._disk.discard(digest)

    def __iter__(self):
        return iter(list(self._mem) + [d for d in self._disk if d not in self._mem])

    def __len__(self) -> int:
        return len(set(self._mem) | self._disk)

    def clear_files(self) -> None:
        """Delete the spilled files (the cache holds nothing personal beyond the run's own output dir)."""
        for digest in list(self._disk):
            self._path(digest).unlink(missing_ok=True)
        self._disk.clear()


def attach_feature_cache(pm, cache: FeatureCache) -> None:
    """Let the shared PersonalModel memoise lower-layer features in `cache` (no size limit of its own)."""
    pm.use_feature_store(cache)


def encode_all(pm, text_lists: Sequence[list[str]], max_length: int, chunk: int = 256,
               progress: Callable[[int], None] | None = None) -> None:
    """Fill the model's feature memo for many devices' example lists, batching across devices.

    Small devices' lists are concatenated into chunks of about `chunk` texts, run through the
    frozen lower layers together, then split back per list and trimmed to that list's own padded
    length, so each entry equals what `pm.encode(texts, max_length)` would have computed alone.
    """
    pending: list[list[str]] = []

    def flush() -> None:
        if not pending:
            return
        flat = [t for texts in pending for t in texts]
        ids, mask = pm.tokenize(flat, max_length)
        hidden = pm.features(ids, mask)
        row = 0
        for texts in pending:
            n = len(texts)
            m = mask[row:row + n]
            width = int(m.sum(dim=1).max()) if n else 0
            pm.put_features(texts, max_length, ids[row:row + n, :width].clone(), m[:, :width].clone(),
                            hidden[row:row + n, :width].clone())
            row += n
        if progress:
            progress(len(pending))
        pending.clear()

    for texts in text_lists:
        if not texts or pm.has_features(texts, max_length):
            if progress:
                progress(1)
            continue
        pending.append(list(texts))
        if sum(len(t) for t in pending) >= chunk:
            flush()
    flush()
