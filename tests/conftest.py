"""Fixtures every test layer shares."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What `make gpu-bundle` carries to a GPU host that has neither ../shared nor the model package.
BUNDLE = ROOT / "bench" / "gpu-bundle"


def _faces_root() -> Path:
    """Settings.faces_dir; where pydantic-settings is not installed (a bare GPU host), the same
    default read directly: BIOFLEET_FACES_DIR, else ../shared/data/faces."""
    try:
        from shared.settings import get_settings
    except ImportError:
        return Path(os.environ.get("BIOFLEET_FACES_DIR", ROOT.parent / "shared" / "data" / "faces"))
    return get_settings().faces_dir


def model_file(name: str) -> Path:
    """A dlib model file from face-recognition-models, else from the GPU bundle; skip when neither."""
    from worker.face.weights import model_path

    try:
        return model_path(name)
    except FileNotFoundError:
        if (BUNDLE / "models" / name).is_file():
            return BUNDLE / "models" / name
    pytest.skip(f"{name} not found: install face-recognition-models or run make gpu-bundle")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The real face images (../shared/data/faces, or BIOFLEET_FACES_DIR); where neither is
    there (a GPU host), the bundle's (lfw_colour only); skip when absent."""
    root = _faces_root()
    if not root.exists() and "BIOFLEET_FACES_DIR" not in os.environ and (BUNDLE / "faces" / "lfw_colour").is_dir():
        root = BUNDLE / "faces"
    if not (root / "lfw_colour").is_dir():
        pytest.skip(f"face images not found at {root} (set BIOFLEET_FACES_DIR)")
    return root
