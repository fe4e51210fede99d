"""Model files: where they are, their sha256, and a cache of the converted network weights."""

import hashlib
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import torch

from worker.face.resnet import read_dlib_resnet

RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"
CACHE_LAYOUT = 1  # bump when read_dlib_resnet changes what it produces

log = logging.getLogger(__name__)


def model_path(name: str) -> Path:
    """The path of a file shipped in face-recognition-models' models/ folder.

    Found without importing the package (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package face-recognition-models is not installed")
    path = Path(spec.origin).parent / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_resnet_state(path: Path | None = None, cache_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The FaceResNet state dict for a dlib .dat file, and the file's sha256.

    path: the .dat (default: the recognition model of face-recognition-models).
    cache_dir: where `<sha256>.pt` is kept; read when present and valid, else the .dat is
    converted and the result written there atomically. None: no cache."""
    path = Path(path) if path is not None else model_path(RECOGNITION_MODEL)
    sha = sha256_file(path)
    cache_file = Path(cache_dir) / f"{sha}.pt" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        state = _read_cache(cache_file, sha)
        if state is not None:
            return state, sha
    state = read_dlib_resnet(path.read_bytes())
    if cache_file is not None:
        _write_cache(cache_file, sha, state)
    return state, sha


def _read_cache(cache_file: Path, sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict, or None when the file is unreadable or for another layout."""
    try:
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        if saved.get("layout") == CACHE_LAYOUT and saved.get("source_sha256") == sha:
            return saved["state_dict"]
    except Exception as error:  # a torn or foreign file: convert again and replace it
        log.warning(
            "model cache unreadable, converting again",
            extra={"cache_file": str(cache_file), "error": repr(error)},
        )
    return None


def write_cache_file(cache_file: Path, write, what: str) -> None:
    """write(file) into a temp file in the same folder, then rename: readers never see a partial
    file. A read-only cache folder costs start-up time, not correctness: it is logged, not raised."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
            os.replace(tmp, cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        log.warning(f"{what} cache not written", extra={"cache_file": str(cache_file), "error": repr(error)})


def _write_cache(cache_file: Path, sha: str, state: dict[str, torch.Tensor]) -> None:
    payload = {"layout": CACHE_LAYOUT, "source_sha256": sha, "state_dict": state}
    write_cache_file(cache_file, lambda f: torch.save(payload, f), "model")
