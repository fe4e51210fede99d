"""What a first GPU run depends on, checked on the CPU: the device choice is logged, a CUDA
out-of-memory error in batched detection splits the batch, and the CUDA tests collect without
pydantic, pydantic-settings or dlib."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker.face.detect import CnnDetector
from worker.face.embed import resolve_device
from worker.face.mmod import MmodDetector
from worker.face.pipeline import FacePipeline

ROOT = Path(__file__).resolve().parents[2]


def test_auto_device_logs_its_choice_and_why(caplog):
    with caplog.at_level(logging.INFO, logger="worker.face.embed"):
        device = resolve_device("auto")
    chosen = [r for r in caplog.records if r.getMessage() == "device chosen"]
    assert chosen, "resolve_device('auto') logged nothing"
    assert chosen[0].device == str(device) and chosen[0].requested == "auto"
    if device.type == "cpu":
        assert "CUDA" in chosen[0].reason


def test_explicit_device_is_not_logged(caplog):
    with caplog.at_level(logging.INFO, logger="worker.face.embed"):
        resolve_device("cpu")
    assert not [r for r in caplog.records if r.getMessage() == "device chosen"]


@pytest.fixture(scope="module")
def pipeline():
    from worker.face.embed import Embedder
    from worker.face.landmarks import Landmarker

    with FacePipeline(Embedder.load(device="cpu"), CnnDetector(device="cpu"), Landmarker(), max_pixels=25_000_000) as p:
        yield p


@pytest.mark.faces
def test_detection_out_of_memory_splits_the_batch(faces_dir, pipeline, monkeypatch, caplog):
    images = [p.read_bytes() for p in sorted((faces_dir / "lfw_colour").glob("*/*_0001.jpg"))][:4]
    batches = []
    scores = MmodDetector._scores

    def tight_memory(self, chunk, layouts, upsample):
        batches.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return scores(self, chunk, layouts, upsample)

    monkeypatch.setattr(MmodDetector, "_scores", tight_memory)
    with caplog.at_level(logging.WARNING, logger="worker.face.pipeline"):
        results = pipeline.process(images)
    assert len(results) == 4 and all(r.ok for r in results)
    assert batches == [4, 2, 2]  # halves, not one image at a time
    assert any("out of memory" in r.getMessage() for r in caplog.records)


@pytest.mark.faces
def test_out_of_memory_on_one_image_fails_that_image(faces_dir, pipeline, monkeypatch):
    images = [p.read_bytes() for p in sorted((faces_dir / "lfw_colour").glob("*/*_0001.jpg"))][:2]

    def no_memory(self, chunk, layouts, upsample):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(MmodDetector, "_scores", no_memory)
    results = pipeline.process(images)
    assert [r.error_code for r in results] == ["bad_image", "bad_image"]


def test_cuda_tests_collect_without_pydantic_or_dlib():
    """As on a GPU host with only torch, numpy, Pillow and pytest (no model package): the modules
    with the CUDA tests import, and their tests skip rather than error (or run from the bundle)."""
    code = (
        "import sys\n"
        "for name in ('pydantic', 'pydantic_settings', 'dlib', 'face_recognition_models', 'shared.settings'):\n"
        "    sys.modules[name] = None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', 'cuda or precision or match_dlib',\n"
        "    'tests/unit/test_embed.py', 'tests/unit/test_mmod.py']))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "BIOFLEET_FACES_DIR": str(ROOT / "no-faces-here")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
