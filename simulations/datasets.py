"""Where the bundled datasets live: one setting, `HOMEBODY_DATA`, defaulting to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

from privacy.errors import HomebodyError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_VAR = "HOMEBODY_DATA"


class DataNotFound(HomebodyError):
    """A bundled dataset folder is missing under the data root."""


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root: `override`, else $HOMEBODY_DATA, else <repo>/../shared/data."""
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def dataset_dir(name: str, override: str | os.PathLike | None = None) -> Path:
    """The folder of one bundled dataset (e.g. 'foursquare_nyc'); raises DataNotFound if absent."""
    path = data_root(override) / name
    if not path.is_dir():
        raise DataNotFound(
            f"dataset {name!r} not found at {path}; set {ENV_VAR} or --data-dir to the folder holding it"
        )
    return path
