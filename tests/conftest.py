"""Shared test fixtures.

Reader tests run on the real staged files: `data/` once `make data` has run, else the read-only
mirror named by EHRBERT_DATA_MIRROR (default `../shared/data`, where this project's CI finds it).
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _raw_data_dir() -> Path | None:
    for candidate in (ROOT / "data", Path(os.environ.get("EHRBERT_DATA_MIRROR", ROOT.parent / "shared" / "data"))):
        if (candidate / "ncbi_disease").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def raw_data() -> Path:
    path = _raw_data_dir()
    if path is None:
        pytest.skip("raw data not found: run `make data` or set EHRBERT_DATA_MIRROR")
    return path
