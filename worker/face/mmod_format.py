"""What dlib's MMOD detector file holds besides plain layers (dlib/dnn/loss.h, input.h), read
with worker.face.dlib_format's Reader: batch-norm layers, the loss_mmod options and detector
windows, and the image pyramid input."""

import math
from dataclasses import dataclass

import numpy as np

from worker.face.dlib_format import Affine, Reader, expect_alias, read_layer

# Records that networks trained with dlib's example programs hold besides the layers above.


@dataclass
class BatchNorm:
    """bn_con2 (batch normalisation per channel, as saved after training): gamma, beta, the
    running means and variances, and eps; flat arrays, one value per channel."""

    gamma: np.ndarray
    beta: np.ndarray
    running_means: np.ndarray
    running_variances: np.ndarray
    eps: float

    def as_affine(self) -> Affine:
        """The affine_ layer dlib builds when it loads this record into a network declared with
        affine layers: gamma / sqrt(variance + eps) and beta - that * mean, in float32 as dlib."""
        gamma = self.gamma.astype(np.float32)
        scale = gamma / np.sqrt(self.running_variances.astype(np.float32) + np.float32(self.eps))
        shift = self.beta.astype(np.float32) - scale * self.running_means.astype(np.float32)
        return Affine(scale.astype(np.float32), shift.astype(np.float32), mode=0)


def peek_string(reader: Reader, what: str = "string") -> str:
    """The string at the cursor, without moving it."""
    start = reader.offset
    try:
        return reader.string(what)
    finally:
        reader.offset = start


def read_bn_con(reader: Reader) -> BatchNorm:
    """A bn_con2 record: its name, params [gamma, beta], 2 aliases, the batch means and inverse
    deviations, the running means and variances, 2 ints, 4 multipliers and eps."""
    start = reader.offset
    reader.expect_string("bn_con2", "layer name")
    params = reader.tensor("bn_con2 params").reshape(-1)
    gamma_shape = reader.alias_tensor("bn_con2 gamma")
    expect_alias(reader, "bn_con2 beta", gamma_shape)
    k = math.prod(gamma_shape)
    if params.size != 2 * k:
        raise reader.fail(f"bn_con2: expected {2 * k} parameters, found {params.size}", start)
    reader.tensor("bn_con2 means")
    reader.tensor("bn_con2 invstds")
    stats = {}
    for name in ("running means", "running variances"):
        at = reader.offset
        stats[name] = reader.tensor(f"bn_con2 {name}").reshape(-1)
        if stats[name].size != k:
            raise reader.fail(f"bn_con2: {stats[name].size} {name} for {k} channels", at)
    reader.int("num_updates")
    reader.int("running_stats_window_size")
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        reader.double(f"{name} multiplier")
    eps = reader.double("eps")
    return BatchNorm(params[:k], params[k:], stats["running means"], stats["running variances"], eps)


def read_affine_or_bn(reader: Reader) -> Affine:
    """An affine_ record, or a bn_con2 record converted to one (as dlib loads it)."""
    if peek_string(reader, "layer name") == "bn_con2":
        return read_bn_con(reader).as_affine()
    return read_layer(reader, expected="affine_")


@dataclass(frozen=True)
class DetectorWindow:
    """One sliding window of loss_mmod: its size in pixels of the tiled pyramid, and its label."""

    width: int
    height: int
    label: str = ""


@dataclass(frozen=True)
class MmodOptions:
    """The loss_mmod_ record (dlib/dnn/loss.h mmod_options): detection windows, and the box
    overlap tests (iou threshold, percent covered threshold) used for non-maximum suppression."""

    windows: tuple[DetectorWindow, ...]
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou_threshold: float
    nms_iou: float
    nms_percent_covered: float
    ignore_iou: float
    ignore_percent_covered: float
    use_image_pyramid: bool = True
    bounding_box_regression: bool = False
    bbr_lambda: float = 100.0


def _read_window(reader: Reader) -> DetectorWindow:
    start = reader.offset
    version = reader.int("detector window version")
    if version not in (1, 2):
        raise reader.fail(f"expected detector window version 1 or 2, found {version}", start)
    width, height = reader.int("window width"), reader.int("window height")
    return DetectorWindow(width, height, reader.string("window label") if version == 2 else "")


def read_mmod_loss(reader: Reader) -> MmodOptions:
    """The loss record of an MMOD detector: "loss_mmod_", then mmod_options versions 1 to 4."""
    reader.expect_string("loss_mmod_", "loss layer name")
    start = reader.offset
    version = reader.int("mmod_options version")
    if not 1 <= version <= 4:
        raise reader.fail(f"expected mmod_options version 1 to 4, found {version}", start)
    if version == 1:
        windows = (DetectorWindow(reader.int("window width"), reader.int("window height")),)
    else:
        windows = tuple(reader.sequence(_read_window, "detector windows"))
    if not windows or any(w.width < 1 or w.height < 1 for w in windows):
        raise reader.fail(f"mmod_options: unusable detector windows {windows}", start)
    values = [
        reader.double(what)
        for what in (
            "loss_per_false_alarm",
            "loss_per_missed_target",
            "truth_match_iou_threshold",
            "overlaps_nms iou",
            "overlaps_nms percent covered",
            "overlaps_ignore iou",
            "overlaps_ignore percent covered",
        )
    ]
    pyramid, regression, bbr_lambda = True, False, 100.0
    if version >= 3:
        pyramid = bytes(reader.take(1, "use_image_pyramid"))[0] != 0
    if version >= 4:
        regression = reader.bool("use_bounding_box_regression")
        bbr_lambda = reader.double("bbr_lambda")
    return MmodOptions(windows, *values, pyramid, regression, bbr_lambda)


@dataclass(frozen=True)
class PyramidInput:
    """input_rgb_image_pyramid: the mean of each channel, subtracted before dividing by 256,
    and the padding between and around the tiles of the pyramid."""

    mean_rgb: tuple[float, float, float]
    padding: int = 10
    outer_padding: int = 11


def read_pyramid_input(reader: Reader) -> PyramidInput:
    """ "input_rgb_image_pyramid" (paddings 10 and 11 implied) or "...pyramid2" (paddings stored)."""
    start = reader.offset
    name = reader.string("input layer name")
    if name not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise reader.fail(f"expected input layer 'input_rgb_image_pyramid', found {name[:40]!r}", start)
    mean = tuple(reader.float(f"{c} mean") for c in ("red", "green", "blue"))
    if name.endswith("2"):
        return PyramidInput(mean, reader.int("pyramid padding"), reader.int("pyramid outer padding"))
    return PyramidInput(mean)
