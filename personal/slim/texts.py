"""Text that ships with homebody, split into train / held-out parts for distillation and perplexity.

``shakespeare_roles``: one file per role; every 10th role (sorted by file name) is held out, the
rest is training text, cut into chunks on line boundaries. ``sst2``: train.tsv sentences for
training, dev.tsv for held-out. A path to a ``.txt`` file: chunks, the last 10% held out.

personal/ sits below simulations/ (where the data-root setting lives), so the default root is
resolved here the same way: ``root``, else ``$HOMEBODY_DATA``, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from personal.slim.manifest import SlimError

DATASETS = ("shakespeare_roles", "sst2")
TRAIN, HELDOUT = "train", "heldout"


def _root(root: str | os.PathLike | None) -> Path:
    if root:
        return Path(root).expanduser()
    if os.environ.get("HOMEBODY_DATA"):
        return Path(os.environ["HOMEBODY_DATA"]).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _chunks(text: str, size: int) -> list[str]:
    out, cur = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        cur = f"{cur}\n{line}" if cur else line
        if len(cur) >= size:
            out.append(cur)
            cur = ""
    if len(cur) >= size // 4:
        out.append(cur)
    return out


def load_texts(source: str, split: str = TRAIN, *, limit: int | None = None, chunk_chars: int = 400,
               root: str | os.PathLike | None = None) -> list[str]:
    """Texts of ``split`` ("train" or "heldout") from a bundled dataset name or a .txt path."""
    if split not in (TRAIN, HELDOUT):
        raise SlimError(f"split must be train or heldout, got {split!r}")
    path = Path(source).expanduser()
    if path.suffix == ".txt" and path.is_file():
        chunks = _chunks(path.read_text(errors="replace"), chunk_chars)
        cut = int(len(chunks) * 0.9)
        texts = chunks[:cut] if split == TRAIN else chunks[cut:]
    elif source == "shakespeare_roles":
        folder = _root(root) / source / "by_play_and_character"
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise SlimError(f"dataset shakespeare_roles not found at {folder}; set HOMEBODY_DATA or --data-dir")
        picked = [f for i, f in enumerate(files) if (i % 10 == 0) == (split == HELDOUT)]
        texts = [c for f in picked for c in _chunks(f.read_text(errors="replace"), chunk_chars)]
    elif source == "sst2":
        f = _root(root) / source / ("train.tsv" if split == TRAIN else "dev.tsv")
        if not f.is_file():
            raise SlimError(f"dataset sst2 not found at {f.parent}; set HOMEBODY_DATA or --data-dir")
        rows = f.read_text().splitlines()[1:]
        texts = [r.split("\t")[0].strip() for r in rows if r.strip()]
    else:
        raise SlimError(f"unknown text source {source!r}: use {', '.join(DATASETS)} or a path to a .txt file")
    if not texts:
        raise SlimError(f"no {split} text in {source!r}")
    return texts[:limit] if limit else texts
