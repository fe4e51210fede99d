"""Aligned 150x150 chips -> 128-d descriptors, one forward pass per batch."""

import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from worker.face.resnet import CHIP_SIZE, DESCRIPTOR_SIZE, FaceResNet, build
from worker.face.weights import load_resnet_state

_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# cuDNN's algorithm search for the fixed (N, 3, 150, 150) chip shape: off until measured on a GPU
# (bench/gpu.sh, stage cudnn_benchmark); on the CPU the flag does nothing.
CUDNN_BENCHMARK = False

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """A device name -> torch.device: "auto" is CUDA when available, else CPU; "cpu", "cuda:1"
    and the like are taken as torch names them (CUDA must be available)."""
    if device == "auto":
        if torch.cuda.is_available():
            chosen, reason = torch.device("cuda"), f"CUDA available: {torch.cuda.get_device_name(0)}"
        elif torch.version.cuda is None:
            chosen, reason = torch.device("cpu"), f"torch {torch.__version__} is built without CUDA"
        else:
            chosen, reason = torch.device("cpu"), f"torch built for CUDA {torch.version.cuda} finds no usable GPU"
        log.info("device chosen", extra={"requested": device, "device": str(chosen), "reason": reason})
        return chosen
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


class Embedder:
    """The face-recognition network on one device, loaded once per worker process."""

    def __init__(
        self,
        model: FaceResNet,
        weights_sha256: str,
        device: torch.device,
        precision: str,
        cudnn_benchmark: bool = False,
    ):
        self.model = model
        self.weights_sha256 = weights_sha256
        self.device = device
        self.precision = precision
        self.cudnn_benchmark = cudnn_benchmark

    @classmethod
    def load(
        cls,
        device: str = "auto",
        cache_dir: Path | None = None,
        precision: str = "fp32",
        path: Path | None = None,
        cudnn_benchmark: bool = CUDNN_BENCHMARK,
    ) -> "Embedder":
        """device: "auto", "cpu", "cuda" or "cuda:N". cache_dir: where converted weights are cached
        (the worker passes Settings.model_cache_dir; None converts the .dat every time).
        precision: "fp32", or "fp16" / "bf16" on CUDA only (ValueError elsewhere). fp32 on CUDA
        turns TF32 off for cuDNN convolutions in this process, so fp32 means fp32. path: the .dat
        (default: face-recognition-models'). cudnn_benchmark: let cuDNN pick its fastest
        convolution algorithms for the chip shape during embed (CUDA only; the flag is restored
        after each call, so the detector's varying shapes are not benchmarked)."""
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
        resolved = resolve_device(device)
        if precision != "fp32" and resolved.type != "cuda":
            raise ValueError(f"precision {precision!r} needs a CUDA device, not {resolved.type}")
        if resolved.type == "cuda" and precision == "fp32":
            torch.backends.cudnn.allow_tf32 = False
        state, sha = load_resnet_state(path, cache_dir=cache_dir)
        model = build(state).to(resolved, memory_format=torch.channels_last)
        return cls(model, sha, resolved, precision, cudnn_benchmark)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """chips: (N, 150, 150, 3) uint8 RGB, aligned like dlib.get_face_chip (N may be 0).
        Returns (N, 128) float32 descriptors, computed in one forward pass."""
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            expected = f"(N, {CHIP_SIZE}, {CHIP_SIZE}, 3) uint8"
            raise ValueError(f"chips must be {expected}, got {chips.shape} {chips.dtype}")
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_SIZE), dtype=np.float32)
        pixels = torch.from_numpy(np.ascontiguousarray(chips)).to(self.device, non_blocking=True)
        # NHWC memory viewed as NCHW is already channels_last: no copy.
        pixels = pixels.permute(0, 3, 1, 2)
        dtype = _PRECISIONS[self.precision]
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), autocast, self._cudnn_flags():
            descriptors = self.model(pixels)
        return descriptors.float().cpu().numpy()

    @contextmanager
    def _cudnn_flags(self):
        """cudnn.benchmark as chosen for this embedder, for one call (CUDA only)."""
        if self.device.type != "cuda":
            yield
            return
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before
