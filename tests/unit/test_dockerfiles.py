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


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / name).read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if not raw.endswith("\\"):
            if current:
                word, _, rest = current.partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_a_non_root_user_with_a_health_check(name):
    instructions = _instructions(name)
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in instructions)


def test_worker_image_is_cuda_and_bakes_the_weights_it_loads(tmp_path):
    instructions = _instructions("Dockerfile.worker")
    args = dict(a.split("=", 1) for word, a in instructions if word == "ARG" and "=" in a)
    assert "cuda" in args["CUDA_BASE"] and "download.pytorch.org/whl/cu" in args["TORCH_INDEX"]
    env = " ".join(a for word, a in instructions if word == "ENV")
    cache_dir = env.split("BIOFLEET_MODEL_CACHE_DIR=")[1].split()[0]
    bake = [a for word, a in instructions if word == "RUN" and "load_pipeline" in a]
    assert len(bake) == 1 and cache_dir in bake[0]
    user_index = max(i for i, (word, _) in enumerate(instructions) if word == "USER")
    assert instructions.index(("RUN", bake[0])) > user_index  # the cache belongs to the worker's user

    # The same build step, here, into a temporary folder and without dlib (the image has none):
    # it must produce the converted weights.
    code = bake[0].split('python -c "', 1)[1].split('"', 1)[0]
    no_dlib = (
        "import builtins; real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] == 'dlib': raise ImportError('no dlib in the worker image')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
    )
    run = no_dlib + code.replace(cache_dir, str(tmp_path))
    subprocess.run([sys.executable, "-c", run], check=True, timeout=300, cwd=ROOT)
    baked = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.endswith(".pt") for n in baked) and any(n.endswith(".shape.npz") for n in baked), baked
    assert "BIOFLEET_DETECTOR=cnn" in env
