"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) in PyTorch.

150x150 RGB chip -> 128-d descriptor. Each dlib affine layer is folded into the conv beneath it.
dlib's geometry is kept exactly: convs and pools pad 0 when the stride is not 1 (else k // 2),
and a residual sum takes the larger of each dimension, aligned top-left and zero-filled.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.face.dlib_format import Affine, Conv, Dense, Pool, Reader, read_layer, read_layer_trailer

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # what the file holds; replaced on load
# (input channels, output channels, blocks, first block down-samples), from the input upward.
STAGES = (
    (32, 32, 3, False),
    (32, 64, 4, True),
    (64, 128, 3, True),
    (128, 256, 3, True),
    (256, 256, 1, True),
)


def dlib_padding(kernel: int, stride: int) -> int:
    """dlib's default padding: 0 when the stride is not 1, else kernel // 2."""
    return 0 if stride != 1 else kernel // 2


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: a + b over the larger of each dimension, aligned top-left, zero-filled."""
    if a.shape == b.shape:
        return a + b
    target = [max(x, y) for x, y in zip(a.shape, b.shape)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        # F.pad counts from the last dimension: (W left, W right, H left, H right, C left, C right).
        pads = (0, target[3] - t.shape[3], 0, target[2] - t.shape[2], 0, target[1] - t.shape[1])
        return F.pad(t, pads) if any(pads) else t

    return grow(a) + grow(b)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    """A conv with a bias (dlib's con_ plus the folded affine_) and dlib's padding."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, dlib_padding(kernel, stride))


class ResidualBlock(nn.Module):
    """relu(add_prev(conv2(relu(conv1(x))), shortcut(x))); the shortcut is a 2x2/2 average pool
    when the block down-samples, else x."""

    def __init__(self, in_channels: int, channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = conv(in_channels, channels, 3, 2 if downsample else 1)
        self.conv2 = conv(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_prev(out, shortcut))


class FaceResNet(nn.Module):
    """Input: (N, 3, 150, 150) RGB pixel values 0..255 (any dtype). Output: (N, 128) descriptors.

    Normalisation is (pixel - input_mean) / 256 in float32; for fp16/bf16 run it under
    torch.autocast (casting the module would round input_mean)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(DLIB_MEAN_RGB).view(1, 3, 1, 1))
        self.stem = conv(3, 32, 7, 2)
        self.layers = nn.Sequential(*(self._make_stage(*stage) for stage in STAGES))
        self.fc = nn.Linear(256, DESCRIPTOR_SIZE, bias=False)

    @staticmethod
    def _make_stage(in_channels: int, channels: int, blocks: int, downsample: bool) -> nn.Sequential:
        rest = (ResidualBlock(channels, channels, False) for _ in range(blocks - 1))
        return nn.Sequential(ResidualBlock(in_channels, channels, downsample), *rest)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() - self.input_mean.float()) / 256.0
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.layers(x)
        return self.fc(x.mean(dim=(2, 3)))


# Mapping the file onto the module.


@dataclass(frozen=True)
class LayerSpec:
    """One dlib layer as the file should hold it.

    name: the record's name, or "tag" / "skip" (these store a version only);
    target: the FaceResNet parameter prefix it fills; conv: the nn.Conv2d for con_4 / affine_;
    pool: (rows, columns, stride, padding) for pools; fc: (inputs, outputs)."""

    name: str
    target: str = ""
    conv: nn.Conv2d | None = None
    pool: tuple[int, int, int, int] | None = None
    fc: tuple[int, int] | None = None

    @property
    def version(self) -> int:
        return 1 if self.name in ("tag", "skip") else 2


def dlib_layers(model: FaceResNet) -> list[LayerSpec]:
    """The 130 layers of dlib's network, from the input upward, mapped to `model`."""
    specs = [
        LayerSpec("con_4", "stem", conv=model.stem),
        LayerSpec("affine_", "stem", conv=model.stem),
        LayerSpec("relu_"),
        LayerSpec("max_pool_2", pool=(3, 3, 2, 0)),
    ]
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage):
            prefix = f"layers.{s}.{b}"
            specs.append(LayerSpec("tag"))
            for name, layer in (("conv1", block.conv1), ("conv2", block.conv2)):
                specs += [LayerSpec("con_4", f"{prefix}.{name}", conv=layer)]
                specs += [LayerSpec("affine_", f"{prefix}.{name}", conv=layer)]
                if name == "conv1":
                    specs.append(LayerSpec("relu_"))
            if block.downsample:
                specs += [LayerSpec("tag"), LayerSpec("skip"), LayerSpec("avg_pool_2", pool=(2, 2, 2, 0))]
            specs += [LayerSpec("add_prev_"), LayerSpec("relu_")]
    specs.append(LayerSpec("avg_pool_2", pool=(0, 0, 1, 0)))
    specs.append(LayerSpec("fc_2", "fc", fc=(model.fc.in_features, model.fc.out_features)))
    return specs


def _check_record(reader: Reader, at: int, spec: LayerSpec, record) -> None:
    """Compares a record's shapes and geometry with the module; fails at offset `at`."""
    if isinstance(record, Conv):
        expected = (tuple(spec.conv.weight.shape), tuple(spec.conv.stride), tuple(spec.conv.padding))
        found = (record.filters.shape, record.stride, record.padding)
        what = "(filters, stride, padding)"
    elif isinstance(record, Affine):
        expected, found = (0, spec.conv.out_channels), (record.mode, record.gamma.size)
        what = "(mode, channels)"
    elif isinstance(record, Pool):
        rows, cols, stride, pad = spec.pool
        kind = "max" if spec.name == "max_pool_2" else "avg"
        expected = (kind, (rows, cols), (stride, stride), (pad, pad))
        found = (record.kind, record.size, record.stride, record.padding)
        what = "(kind, size, stride, padding)"
    elif isinstance(record, Dense):
        expected, found = (spec.fc, False), (record.weights.shape, record.biases is not None)
        what = "(weights, has bias)"
    else:
        return
    if found != expected:
        target = spec.target or "no parameters"
        raise reader.fail(f"layer {spec.name} ({target}): expected {what} {expected}, found {found}", at)


def read_dlib_resnet(data: bytes, model: FaceResNet | None = None) -> dict[str, torch.Tensor]:
    """The bytes of dlib_face_recognition_resnet_model_v1.dat -> a state dict for FaceResNet.

    Checks every layer name, version and shape, and the exact end of the file; any mismatch
    raises WeightsFormatError naming the byte offset."""
    specs = dlib_layers(model or FaceResNet())
    r = Reader(data)
    r.expect_int(1, "loss layer version")
    r.expect_string("loss_metric_2", "loss layer name")
    r.double("margin")
    r.double("distance threshold")
    for depth, spec in enumerate(reversed(specs)):
        version = 3 if depth == len(specs) - 1 else spec.version
        r.expect_int(version, f"version of layer {len(specs) - depth} ({spec.name})")
    r.expect_string("input_rgb_image_sized", "input layer name")
    mean = [r.float(f"{c} mean") for c in ("red", "green", "blue")]
    r.expect_int(CHIP_SIZE, "input rows")
    r.expect_int(CHIP_SIZE, "input columns")

    state = {"input_mean": torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)}
    pending: Conv | None = None  # a con_4 waiting for its affine_
    for index, spec in enumerate(specs):
        if spec.name in ("tag", "skip"):
            continue
        at = r.offset
        record = read_layer(r, expected=spec.name)
        _check_record(r, at, spec, record)
        if isinstance(record, Conv):
            pending = record
        elif isinstance(record, Affine):
            weight, bias = _fold(pending, record)
            state[f"{spec.target}.weight"], state[f"{spec.target}.bias"] = weight, bias
            pending = None
        elif isinstance(record, Dense):
            state[f"{spec.target}.weight"] = torch.from_numpy(np.ascontiguousarray(record.weights.T))
        read_layer_trailer(r, over_input=index == 0)
    r.end()
    return state


def _fold(conv_record: Conv, affine: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """affine(conv(x)) as one conv: W * gamma, b * gamma + beta (computed in float64)."""
    gamma = affine.gamma.astype(np.float64)
    weight = conv_record.filters.astype(np.float64) * gamma[:, None, None, None]
    bias = conv_record.biases.astype(np.float64) * gamma + affine.beta.astype(np.float64)
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def build(state: dict[str, torch.Tensor]) -> FaceResNet:
    """A FaceResNet in eval mode holding `state` (every key must match)."""
    model = FaceResNet()
    model.load_state_dict(state, strict=True)
    return model.eval()
