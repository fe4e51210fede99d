"""Fixtures every test layer shares."""

from pathlib import Path

import pytest

from shared.settings import get_settings


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The real face images (../shared/data/faces, or BIOFLEET_FACES_DIR); skip when absent."""
    root = get_settings().faces_dir
    if not (root / "lfw_colour").is_dir():
        pytest.skip(f"face images not found at {root} (set BIOFLEET_FACES_DIR)")
    return root
