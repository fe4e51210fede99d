"""A reader for dlib's serialization format (dlib/serialize.h, dlib/dnn/tensor.h).

Generic: it reads primitives, tensors and matrices; what a file holds (which layers, in which
order) is up to the caller. Every check fails with WeightsFormatError(offset, message).
"""

import builtins
import math
from dataclasses import dataclass

import numpy as np

from worker.face.errors import WeightsFormatError

# float_details exponents that stand for +inf, -inf and NaN.
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


def floats_from_pairs(mantissas: list[int], exponents: list[int]) -> np.ndarray:
    """dlib floats from their (mantissa, exponent) integers: mantissa * 2**exponent, with the
    special exponents for infinities and NaN; float64 (inf where a value overflows)."""
    exponent = np.asarray(exponents, dtype=np.int64)
    with np.errstate(over="ignore"):
        values = np.ldexp(np.asarray(mantissas, dtype=np.float64), np.clip(exponent, -2000, 2000))
    for code, special in _SPECIAL_EXPONENTS.items():
        values[exponent == code] = special
    return values


class Reader:
    """A cursor over the bytes of a dlib file; `offset` is the position of the next read.

    Methods are named after what they read (int, float, bool ...); inside this class body the
    builtins are spelled builtins.int and so on."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data = memoryview(data).cast("B")
        self.offset = offset
        self._bytes = data if isinstance(data, bytes) else None  # indexed faster than the view

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset

    def fail(self, message: str, offset: int | None = None) -> WeightsFormatError:
        """An error at `offset` (default: the current one), for the caller to raise."""
        return WeightsFormatError(self.offset if offset is None else offset, message)

    def take(self, n: int, what: str) -> memoryview:
        """The next n raw bytes; fails when the file ends first."""
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated: {what} needs {n} bytes, {self.remaining} left")
        view = self.data[self.offset : self.offset + n]
        self.offset += n
        return view

    # Primitives.

    def int(self, what: str = "integer") -> int:
        """An integer of any width: a control byte (low nibble = byte count, 0x80 = negative),
        then that many little-endian magnitude bytes."""
        start = self.offset
        if self.remaining < 1:
            raise self.fail(f"truncated: expected {what}")
        control = self.data[start]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.fail(f"expected {what}: bad integer control byte 0x{control:02x}", start)
        if size >= self.remaining:
            raise self.fail(f"truncated: {what} needs {size + 1} bytes, {self.remaining} left")
        self.offset += 1
        magnitude = int.from_bytes(self.take(size, what), "little")
        return -magnitude if control & 0x80 else magnitude

    def ints(self, count: builtins.int, what: str = "integer") -> list[builtins.int]:
        """`count` integers in the encoding of `int()`, decoded in one tight loop (for the long
        runs of numbers in shape predictor files); errors are reported as `int()` reports them."""
        start = self.offset
        data = self._bytes if self._bytes is not None else bytes(self.data)
        values = [0] * count
        position, end = start, len(data)
        from_bytes = builtins.int.from_bytes
        try:
            for i in range(count):
                control = data[position]
                size = control & 0x0F
                if control & 0x70 or not 1 <= size <= 8 or position + size >= end:
                    raise IndexError
                magnitude = from_bytes(data[position + 1 : position + 1 + size], "little")
                values[i] = -magnitude if control & 0x80 else magnitude
                position += 1 + size
        except IndexError:  # read again one by one, for the exact error and offset
            self.offset = start
            return [self.int(what) for _ in range(count)]
        self.offset = position
        return values

    def bool(self, what: str = "bool") -> bool:
        """ASCII '1' or '0'."""
        start = self.offset
        byte = bytes(self.take(1, what))
        if byte not in (b"0", b"1"):
            raise self.fail(f"expected {what} ('0' or '1'), found byte 0x{byte[0]:02x}", start)
        return byte == b"1"

    def string(self, what: str = "string") -> str:
        """An integer length, then the raw bytes (decoded as latin-1, so any byte is kept)."""
        length = self.int(f"length of {what}")
        return bytes(self.take(length, what)).decode("latin-1")

    def float(self, what: str = "float") -> float:
        """A float or double: integer mantissa, then integer exponent; mantissa * 2**exponent."""
        start = self.offset
        mantissa = self.int(f"mantissa of {what}")
        exponent = self.int(f"exponent of {what}")
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise self.fail(f"{what} out of range: {mantissa} * 2**{exponent}", start) from None

    double = float

    def floats(self, count: builtins.int, what: str = "floats") -> np.ndarray:
        """`count` floats in the encoding of `float()`, as a float64 array."""
        if count < 0 or 4 * count > self.remaining:  # each takes at least 4 bytes
            raise self.fail(f"truncated: {count} {what} cannot fit in {self.remaining} bytes")
        return np.array([self.float(what) for _ in range(count)], dtype=np.float64)

    def float_array(self, count: builtins.int, what: str = "float") -> np.ndarray:
        """`count` floats as `float()` reads them, as a float64 array, decoded in bulk."""
        start = self.offset
        pairs = self.ints(2 * count, f"{what} part")
        values = floats_from_pairs(pairs[0::2], pairs[1::2])
        if not np.isfinite(values).all() and not np.isin(pairs[1::2], list(_SPECIAL_EXPONENTS)).any():
            self.offset = start
            return self.floats(count, what)  # for the exact out-of-range error
        return values

    # Expectations.

    def expect_int(self, expected: builtins.int, what: str) -> builtins.int:
        start = self.offset
        value = self.int(what)
        if value != expected:
            raise self.fail(f"expected {what} = {expected}, found {value}", start)
        return value

    def expect_string(self, expected: str, what: str = "layer name") -> str:
        start = self.offset
        try:
            value = self.string(what)
        except WeightsFormatError as error:
            raise self.fail(f"expected {what} {expected!r}: {error.args[0]}", start) from None
        if value != expected:
            raise self.fail(f"expected {what} {expected!r}, found {value[:40]!r}", start)
        return value

    def end(self) -> None:
        """Fails unless every byte has been read."""
        if self.remaining:
            raise self.fail(f"expected end of file, found {self.remaining} more bytes")

    # Compound values.

    def shape4(self, what: str) -> tuple[builtins.int, ...]:
        """(num_samples, k, nr, nc), each non-negative."""
        start = self.offset
        shape = tuple(self.int(f"{what} shape") for _ in range(4))
        if any(d < 0 for d in shape):
            raise self.fail(f"{what}: negative shape {shape}", start)
        return shape

    def tensor(self, what: str = "tensor") -> np.ndarray:
        """A tensor as a float32 array shaped (num_samples, k, nr, nc).

        Version 2: raw little-endian float32; version 1: one encoded float per element."""
        start = self.offset
        version = self.int(f"{what} version")
        if version not in (1, 2):
            raise self.fail(f"expected {what} version 1 or 2, found {version}", start)
        shape = self.shape4(what)
        count = math.prod(shape)
        if version == 2:
            raw = self.take(4 * count, f"{what} data ({count} float32)")
            values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            values = self.floats(count, f"{what} element").astype(np.float32)
        return values.reshape(shape)

    def alias_tensor(self, what: str = "alias tensor") -> tuple[builtins.int, ...]:
        """An alias tensor: version 1, then its shape (the offset is implied by the layer)."""
        self.expect_int(1, f"{what} version")
        return self.shape4(what)

    def matrix(self, what: str = "matrix") -> np.ndarray:
        """A dlib matrix: -nr, -nc, then nr*nc encoded floats in row-major order (float64).

        Positive sizes (dlib's older layout) are read the same way."""
        nr = abs(self.int(f"{what} rows"))
        nc = abs(self.int(f"{what} columns"))
        return self.floats(nr * nc, f"{what} element").reshape(nr, nc)

    def sequence(self, read_item, what: str = "vector") -> list:
        """A std::vector: an integer size, then each item read by `read_item(self)`."""
        size = self.int(f"size of {what}")
        if size < 0:
            raise self.fail(f"{what}: negative size {size}")
        return [read_item(self) for _ in range(size)]


# Layer records of dlib's dnn files (dlib/dnn/layers.h). Each add_layer writes its version, the
# layers beneath it, then the record read here, then `read_layer_trailer`.


@dataclass
class Conv:
    """con_4: filters (O, I, H, W), biases (O,), stride and padding as (y, x)."""

    filters: np.ndarray
    biases: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class Affine:
    """affine_: out = gamma * x + beta; gamma and beta flat, one value per channel when mode is 0."""

    gamma: np.ndarray
    beta: np.ndarray
    mode: int


@dataclass
class Pool:
    """max_pool_2 / avg_pool_2; size (0, 0) means a global average."""

    kind: str  # "max" or "avg"
    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class Dense:
    """fc_2: weights (inputs, outputs) as dlib stores them; biases None when the layer has none."""

    weights: np.ndarray
    biases: np.ndarray | None


@dataclass
class Plain:
    """A layer with no parameters (relu_, add_prev_)."""

    name: str


def _expect_alias(reader: Reader, what: str, shape: tuple[int, ...]) -> None:
    start = reader.offset
    found = reader.alias_tensor(what)
    if found != shape:
        raise reader.fail(f"expected {what} shaped {shape}, found {found}", start)


def _read_con(r: Reader) -> Conv:
    start = r.offset
    params = r.tensor("con_4 params").reshape(-1)
    num_filters, nr, nc = r.int("num_filters"), r.int("filter rows"), r.int("filter columns")
    stride = (r.int("stride_y"), r.int("stride_x"))
    padding = (r.int("padding_y"), r.int("padding_x"))
    filters_shape = r.alias_tensor("con_4 filters")
    o, k, fr, fc = filters_shape
    if (o, fr, fc) != (num_filters, nr, nc) or params.size != o * k * fr * fc + o:
        raise r.fail(
            f"con_4: filters {filters_shape} do not match {num_filters} filters of {nr}x{nc}"
            f" and {params.size} parameters",
            start,
        )
    _expect_alias(r, "con_4 biases", (1, o, 1, 1))
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.double(f"{name} multiplier")
    n = o * k * fr * fc
    return Conv(params[:n].reshape(filters_shape), params[n:], stride, padding)


def _read_affine(r: Reader) -> Affine:
    start = r.offset
    params = r.tensor("affine_ params").reshape(-1)
    gamma_shape = r.alias_tensor("affine_ gamma")
    _expect_alias(r, "affine_ beta", gamma_shape)
    k = math.prod(gamma_shape)
    if params.size != 2 * k:
        raise r.fail(f"affine_: expected {2 * k} parameters, found {params.size}", start)
    mode = r.int("affine_ mode")
    return Affine(params[:k], params[k:], mode)


def _read_pool(r: Reader, kind: str) -> Pool:
    ints = [r.int(what) for what in ("rows", "columns", "stride_y", "stride_x", "padding_y", "padding_x")]
    return Pool(kind, (ints[0], ints[1]), (ints[2], ints[3]), (ints[4], ints[5]))


def _read_fc(r: Reader) -> Dense:
    outputs, inputs = r.int("fc_2 outputs"), r.int("fc_2 inputs")
    params_at = r.offset
    params = r.tensor("fc_2 params").reshape(-1)
    _expect_alias(r, "fc_2 weights", (inputs, outputs, 1, 1))
    biases_at = r.offset
    biases_shape = r.alias_tensor("fc_2 biases")
    has_bias = r.int("fc_2 bias_mode") == 0
    if biases_shape != ((1, outputs, 1, 1) if has_bias else (0, 0, 0, 0)):
        raise r.fail(f"fc_2: biases shaped {biases_shape} with bias {has_bias}", biases_at)
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        r.double(f"{name} multiplier")
    n = inputs * outputs
    if params.size != n + (outputs if has_bias else 0):
        raise r.fail(f"fc_2: {params.size} parameters for {inputs} -> {outputs}", params_at)
    return Dense(params[:n].reshape(inputs, outputs), params[n:] if has_bias else None)


_LAYER_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "max_pool_2": lambda r: _read_pool(r, "max"),
    "avg_pool_2": lambda r: _read_pool(r, "avg"),
    "fc_2": _read_fc,
    "relu_": lambda r: Plain("relu_"),
    "add_prev_": lambda r: Plain("add_prev_"),
}


def read_layer(reader: Reader, expected: str | None = None) -> Conv | Affine | Pool | Dense | Plain:
    """One layer record: its name, then its details. With `expected`, any other name fails."""
    start = reader.offset
    if expected is not None:
        reader.expect_string(expected, "layer name")
        name = expected
    else:
        name = reader.string("layer name")
    if name not in _LAYER_READERS:
        raise reader.fail(f"unsupported layer {name[:40]!r}", start)
    return _LAYER_READERS[name](reader)


def read_layer_trailer(reader: Reader, over_input: bool = False) -> None:
    """What add_layer writes after a layer's details: 3 bools and 3 (empty) tensors; the layer
    directly over the input adds its sample expansion factor (1)."""
    for what in ("setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
        reader.bool(what)
    for what in ("x_grad", "cached_output", "params_grad"):
        reader.tensor(what)
    if over_input:
        reader.expect_int(1, "sample expansion factor")


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
    _expect_alias(reader, "bn_con2 beta", gamma_shape)
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
    values = [reader.double(what) for what in (
        "loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold",
        "overlaps_nms iou", "overlaps_nms percent covered",
        "overlaps_ignore iou", "overlaps_ignore percent covered",
    )]  # fmt: skip
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
