"""Shared fixtures. Real-data tests read ../shared/data and FAIL (never skip) when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT/MRI cases beside the repository (``../shared/data``)."""
    if not (SHARED_DATA / "MANIFEST.tsv").is_file():
        pytest.fail(f"real test data not found at {SHARED_DATA}: clone the project beside ../shared")
    return SHARED_DATA
