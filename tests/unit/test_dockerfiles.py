"""The images are not built here (no Docker engine); they are linted, and their commands checked."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker"]


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or pytest.skip("hadolint not installed")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    result = subprocess.run([_hadolint(), str(ROOT / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_only_existing_paths(name):
    for line in (ROOT / name).read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_worker_image_installs_everything_but_torch_from_the_pinned_file():
    text = (ROOT / "Dockerfile.worker").read_text()
    assert "grep -v '^torch=='" in text
    assert "torch==2.13.0" in (ROOT / "requirements" / "worker.txt").read_text()
