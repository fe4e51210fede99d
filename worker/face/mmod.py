"""dlib's CNN face detector (mmod_human_face_detector.dat) in PyTorch, batched over images.

MmodDetector.load(device).detect_many(images) -> per image, the faces dlib.cnn_face_detection_model_v1
finds, with the same boxes and confidences. The steps, as dlib runs them:
1. input_rgb_image_pyramid<pyramid_down<6>>: (pixel - mean) / 256, then the image shrunk to 5/6 again
   and again (bilinear, corners aligned) while a level keeps at least 5 rows; all levels tiled into
   one image (10 pixels between tiles, 11 around), the first column of tiles going down, the rest
   coming back up on the right;
2. the network: three 5x5 stride-2 convs, three 5x5 convs, each with its affine (or batch-norm) layer
   and a relu, then a 9x9 conv to one score per 8x8 step of the tiled image;
3. loss_mmod: each score above the threshold is a detection window (80x80 in this file) centred on
   the point the score's receptive field is centred on, mapped to the tile that point falls in and up
   that tile's pyramid level to image coordinates, rounded; then non-maximum suppression, best first,
   with the file's own overlap test.
Images of any sizes share a forward pass: each tiled pyramid is padded to the largest of the batch,
and before every conv that pads, activations outside each image's own area are zeroed, so each image
gets the scores it would get alone. upsample > 0 doubles each image first, as dlib's pyramid_up.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worker.face.dlib_format import (
    Conv,
    MmodOptions,
    PyramidInput,
    Reader,
    read_affine_or_bn,
    read_layer,
    read_layer_trailer,
    read_mmod_loss,
    read_pyramid_input,
)
from worker.face.types import Box

PYRAMID_FACTOR = 6  # pyramid_down<6>: each level is 5/6 of the one above (not stored in the file)
MIN_LEVEL_ROWS = 5
# (in channels, out channels, kernel, stride, padding) of the convs, from the input upward.
DOWNSAMPLER = ((3, 16, 5, 2, 0), (16, 32, 5, 2, 0), (32, 32, 5, 2, 0))
BODY = ((32, 45, 5, 1, 2), (45, 45, 5, 1, 2), (45, 45, 5, 1, 2))
SCORE = (45, 1, 9, 1, 4)
# Tiled-pyramid pixels per forward pass (a 250x250 image tiles to 957x272, 260 k pixels). On the
# CPU small batches keep the activations in cache (measured fastest at 4-8 such images).
MAX_BATCH_PIXELS = {"cpu": 2_000_000, "cuda": 32_000_000}


@dataclass(frozen=True)
class Detection:
    """A face found by the detector: inclusive corners (not clipped to the image) and the
    detection score (dlib's mmod_rectangle.confidence)."""

    left: int
    top: int
    right: int
    bottom: int
    confidence: float

    def box(self) -> Box:
        return Box(self.left, self.top, self.right, self.bottom)


# The tiled pyramid.


@dataclass(frozen=True)
class Tile:
    """Where one pyramid level sits in the tiled image."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height - 1

    @property
    def right(self) -> int:
        return self.left + self.width - 1


@dataclass(frozen=True)
class PyramidLayout:
    """The tiles (level 0 first) and the size of the tiled image."""

    tiles: tuple[Tile, ...]
    height: int
    width: int


def pyramid_levels(height: int, width: int, factor: int = PYRAMID_FACTOR) -> list[tuple[int, int]]:
    """(rows, columns) of each level, the image first: floor(rate * size) with rate (N-1)/N, down
    to the last level with at least 5 rows (dlib's find_pyramid_down_output_image_size)."""
    if height * width == 0:
        return []
    rate = (factor - 1.0) / factor
    sizes = [(height, width)]
    while True:
        height, width = math.floor(rate * height), math.floor(rate * width)
        if height * width == 0 or height < MIN_LEVEL_ROWS:
            return sizes
        sizes.append((height, width))


def pyramid_layout(
    height: int, width: int, padding: int, outer_padding: int, factor: int = PYRAMID_FACTOR
) -> PyramidLayout:
    """dlib's compute_tiled_image_pyramid_details for an image of height x width."""
    sizes = pyramid_levels(height, width, factor)
    if not sizes:
        return PyramidLayout((), 0, 0)
    first_h, first_w = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    column, prev_width = 0, 0
    for h, w in sizes:  # go down the first column until the rest fits beside it, coming back up
        if w <= first_w - prev_width - padding and (column - first_h) * 2 >= total_height - first_h:
            break
        column += h + padding
        prev_width = w
    column -= padding

    tiles: list[Tile] = []
    y, i = outer_padding, 0
    while y < column + outer_padding and i < len(sizes):
        h, w = sizes[i]
        tiles.append(Tile(y, outer_padding, h, w))
        y += h + padding
        i += 1
    y -= padding
    first = tiles[0]
    while i < len(sizes):  # the second column, bottom-up, right-aligned
        h, w = sizes[i]
        tile = Tile(y - h, outer_padding + first_w - w, h, w)
        overlaps = max(tile.left, first.left) <= min(tile.right, first.right) and max(tile.top, first.top) <= min(
            tile.bottom, first.bottom
        )
        if overlaps:  # dlib drops the levels that would overlap the image itself
            break
        tiles.append(tile)
        y -= h + padding
        i += 1
    return PyramidLayout(tuple(tiles), column + 2 * outer_padding, first_w + 2 * outer_padding)


def _tile_levels(pixels: torch.Tensor, layout: PyramidLayout) -> list[torch.Tensor]:
    """pixels: (n, 3, H, W) normalised float32 -> each level of the pyramid, each resized from the
    one above it bilinearly with corners aligned (dlib's tt::resize_bilinear)."""
    levels = [pixels]
    for tile in layout.tiles[1:]:
        size = (tile.height, tile.width)
        levels.append(F.interpolate(levels[-1], size=size, mode="bilinear", align_corners=True))
    return levels


def pyramid_up(image: torch.Tensor) -> torch.Tensor:
    """dlib's pyramid_up with pyramid_down<2> on (n, 3, H, W) uint8 images: (2H + 1, 2W + 2) by
    bilinear interpolation with corners aligned, truncated to uint8 (as dlib's RGB resize)."""
    h, w = image.shape[-2:]
    up = F.interpolate(image.float(), size=(2 * h + 1, 2 * w + 2), mode="bilinear", align_corners=True)
    return up.clamp_(0, 255).to(torch.uint8)


# The network.


def _conv(spec: tuple[int, int, int, int, int]) -> nn.Conv2d:
    in_channels, out_channels, kernel, stride, padding = spec
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding)


class MmodNet(nn.Module):
    """Input: (N, 3, H, W) tiled pyramids, already normalised. Output: (N, 1, h, w) scores.

    mask: (N, 1, h, w) of 1 inside each image's own area at the 1/8 resolution, 0 outside (None
    when every image of the batch has the same size)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor((122.782, 117.001, 104.298)).view(1, 3, 1, 1))
        self.down = nn.ModuleList(_conv(spec) for spec in DOWNSAMPLER)
        self.body = nn.ModuleList(_conv(spec) for spec in BODY)
        self.score = _conv(SCORE)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for conv in self.down:
            x = F.relu(conv(x))
        for conv in self.body:
            x = F.relu(conv(x if mask is None else x * mask))
        return self.score(x if mask is None else x * mask)

    def convs(self) -> list[nn.Conv2d]:
        """The convs from the input upward."""
        return [*self.down, *self.body, self.score]


def conv_output_size(size: int, convs: list[nn.Conv2d]) -> int:
    """Rows (or columns) out of `convs` for an input of `size` (0 when too small)."""
    for conv in convs:
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        size = (size + 2 * p - k) // s + 1 if size + 2 * p >= k else 0
    return size


def output_to_input(model: MmodNet) -> tuple[float, float]:
    """(scale, offset) with score position q centred on input point scale * q + offset
    (dlib's output_tensor_to_input_tensor: p -> p * stride - padding + kernel // 2 per conv)."""
    scale, offset = 1.0, 0.0
    for conv in reversed(model.convs()):
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        scale, offset = scale * s, offset * s - p + k // 2
    return scale, offset


# The file.


@dataclass(frozen=True)
class MmodFile:
    """What mmod_human_face_detector.dat holds: the state dict for MmodNet (affine layers folded
    into the convs beneath them), the loss options and the input layer."""

    state: dict[str, torch.Tensor]
    options: MmodOptions
    pyramid: PyramidInput


def _fold(conv: Conv, gamma: np.ndarray, beta: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """affine(conv(x)) as one conv: W * gamma, b * gamma + beta (in float64)."""
    g = gamma.astype(np.float64)
    weight = conv.filters.astype(np.float64) * g[:, None, None, None]
    bias = conv.biases.astype(np.float64) * g + beta.astype(np.float64)
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


def read_mmod(data: bytes, model: MmodNet | None = None) -> MmodFile:
    """The bytes of an MMOD detector file shaped like mmod_human_face_detector.dat -> MmodFile.

    Checks every layer name, version and shape and the exact end of the file; any mismatch raises
    WeightsFormatError naming the byte offset."""
    model = model or MmodNet()
    convs = [(f"down.{i}", c) for i, c in enumerate(model.down)]
    convs += [(f"body.{i}", c) for i, c in enumerate(model.body)] + [("score", model.score)]
    layers = 3 * (len(convs) - 1) + 1  # con, affine, relu each; the score conv alone
    r = Reader(data)
    r.expect_int(1, "loss layer version")
    options = read_mmod_loss(r)
    if options.bounding_box_regression:
        raise r.fail("bounding box regression is not supported")
    if len(options.windows) != model.score.out_channels:
        raise r.fail(f"{len(options.windows)} detector windows for {model.score.out_channels} score channels")
    for depth in range(layers):
        version = 3 if depth == layers - 1 else 2
        r.expect_int(version, f"version of layer {layers - depth}")
    pyramid = read_pyramid_input(r)

    state = {"input_mean": torch.tensor(pyramid.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)}
    for index, (target, module) in enumerate(convs):
        at = r.offset
        conv = read_layer(r, expected="con_4")
        expected = (tuple(module.weight.shape), tuple(module.stride), tuple(module.padding))
        found = (conv.filters.shape, conv.stride, conv.padding)
        if found != expected:
            raise r.fail(f"con_4 ({target}): expected (filters, stride, padding) {expected}, found {found}", at)
        read_layer_trailer(r, over_input=index == 0)
        if target == "score":
            weight, bias = torch.from_numpy(conv.filters.copy()), torch.from_numpy(conv.biases.copy())
        else:
            at = r.offset
            affine = read_affine_or_bn(r)
            if affine.mode != 0 or affine.gamma.size != module.out_channels:
                raise r.fail(f"affine ({target}): mode {affine.mode}, {affine.gamma.size} channels", at)
            read_layer_trailer(r)
            read_layer(r, expected="relu_")
            read_layer_trailer(r)
            weight, bias = _fold(conv, affine.gamma, affine.beta)
        state[f"{target}.weight"], state[f"{target}.bias"] = weight, bias
    r.end()
    return MmodFile(state, options, pyramid)


# Detection.


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], iou: float, covered: float) -> bool:
    """dlib's test_box_overlap on inclusive rectangles (l, t, r, b); the "union" is the bounding box."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return False
    inner = float(iw * ih)
    outer = (max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inner / outer > iou or inner / area_a > covered or inner / area_b > covered


def _round(values: np.ndarray) -> np.ndarray:
    """dlib's conversion of a double point to an integer one: floor(v + 0.5)."""
    return np.floor(values + 0.5).astype(np.int64)


def _round_rect(values: np.ndarray) -> np.ndarray:
    """dlib's conversion of a drectangle to a rectangle: halves away from zero (std::round)."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


class MmodDetector:
    """The ported MMOD face detector on one device; load once per process."""

    def __init__(self, model: MmodNet, options: MmodOptions, pyramid: PyramidInput, device: torch.device,
                 max_batch_pixels: int | None = None):  # fmt: skip
        self.model = model
        self.options = options
        self.pyramid = pyramid
        self.device = device
        self.max_batch_pixels = max_batch_pixels or MAX_BATCH_PIXELS.get(device.type, MAX_BATCH_PIXELS["cpu"])
        self._scale, self._offset = output_to_input(model)
        self._smallest_input = next(n for n in range(1, 1000) if conv_output_size(n, model.convs()) > 0)

    @classmethod
    def load(
        cls, device: str = "auto", path: Path | None = None, max_batch_pixels: int | None = None
    ) -> "MmodDetector":
        """device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"; path: the .dat
        (default: mmod_human_face_detector.dat of face-recognition-models); max_batch_pixels:
        tiled-pyramid pixels per forward pass (default by device, MAX_BATCH_PIXELS)."""
        from worker.face.embed import resolve_device
        from worker.face.weights import MMOD_DETECTOR, model_path

        resolved = resolve_device(device)
        if resolved.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32, as for the embedder
        path = Path(path) if path is not None else model_path(MMOD_DETECTOR)
        loaded = read_mmod(path.read_bytes())
        model = MmodNet()
        model.load_state_dict(loaded.state, strict=True)
        model = model.eval().to(resolved, memory_format=torch.channels_last)
        return cls(model, loaded.options, loaded.pyramid, resolved, max_batch_pixels)

    def detect(self, image: np.ndarray, threshold: float = 0.0, upsample: int = 0) -> list[Detection]:
        """One (H, W, 3) uint8 RGB image -> its detections, best first."""
        return self.detect_many([image], threshold, upsample)[0]

    def detect_many(self, images: list[np.ndarray], threshold: float = 0.0, upsample: int = 0) -> list[list[Detection]]:
        """(H, W, 3) uint8 RGB images of any sizes -> per image, the detections scoring above
        `threshold`, best first, after non-maximum suppression. upsample: how many times each
        image is doubled first (dlib's pyramid_up), to find faces smaller than the window."""
        if upsample < 0:
            raise ValueError("upsample must be >= 0")
        for image in images:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"images must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        sizes = [self._input_size(image.shape[0], image.shape[1], upsample) for image in images]
        layouts = [pyramid_layout(h, w, self.pyramid.padding, self.pyramid.outer_padding) for h, w in sizes]
        results: list[list[Detection]] = [[] for _ in images]
        order = sorted(range(len(images)), key=lambda i: (layouts[i].height * layouts[i].width, sizes[i]))
        order = [i for i in order if layouts[i].tiles]
        for chunk in self._chunks(order, layouts):
            scores = self._scores([images[i] for i in chunk], [layouts[i] for i in chunk], upsample)
            for i, found in zip(chunk, self._decode(scores, [layouts[i] for i in chunk], threshold)):
                results[i] = self._map_back(found, upsample)
        return results

    @staticmethod
    def _input_size(height: int, width: int, upsample: int) -> tuple[int, int]:
        for _ in range(upsample):
            height, width = 2 * height + 1, 2 * width + 2
        return height, width

    def _chunks(self, order: list[int], layouts: list[PyramidLayout]) -> list[list[int]]:
        """Consecutive runs of `order` whose padded batch stays within max_batch_pixels."""
        chunks: list[list[int]] = []
        for i in order:
            if chunks:
                chunk = chunks[-1] + [i]
                h = max(layouts[j].height for j in chunk)
                w = max(layouts[j].width for j in chunk)
                if len(chunk) * h * w <= self.max_batch_pixels:
                    chunks[-1] = chunk
                    continue
            chunks.append([i])
        return chunks

    def _scores(self, images: list[np.ndarray], layouts: list[PyramidLayout], upsample: int) -> torch.Tensor:
        """The score maps of one batch: (n, 1, h, w) float32 on the device."""
        smallest = self._smallest_input
        height = max(smallest, max(layout.height for layout in layouts))
        width = max(smallest, max(layout.width for layout in layouts))
        canvas = torch.zeros((len(images), 3, height, width), dtype=torch.float32, device=self.device)
        canvas = canvas.contiguous(memory_format=torch.channels_last)  # faster convs, CPU and CUDA
        mean = self.model.input_mean.float()
        start = 0
        with torch.inference_mode():
            while start < len(images):  # runs of same-size images build their pyramids together
                end = start + 1
                while end < len(images) and images[end].shape == images[start].shape:
                    end += 1
                pixels = torch.from_numpy(np.stack(images[start:end])).to(self.device).permute(0, 3, 1, 2)
                for _ in range(upsample):
                    pixels = pyramid_up(pixels)
                pixels = (pixels.float() - mean) / 256.0
                for tile, level in zip(layouts[start].tiles, _tile_levels(pixels, layouts[start])):
                    canvas[start:end, :, tile.top : tile.top + tile.height, tile.left : tile.left + tile.width] = level
                start = end
            mask = None
            if any((layout.height, layout.width) != (height, width) for layout in layouts):
                mask = self._mask(layouts, height, width)
            return self.model(canvas, mask)

    def _mask(self, layouts: list[PyramidLayout], height: int, width: int) -> torch.Tensor:
        """1 inside each image's own area at the resolution after the downsampler, else 0."""
        down = list(self.model.down)
        rows = torch.arange(conv_output_size(height, down), device=self.device).view(1, 1, -1, 1)
        cols = torch.arange(conv_output_size(width, down), device=self.device).view(1, 1, 1, -1)
        valid_h = [conv_output_size(layout.height, down) for layout in layouts]
        valid_w = [conv_output_size(layout.width, down) for layout in layouts]
        valid_h = torch.tensor(valid_h, device=self.device).view(-1, 1, 1, 1)
        valid_w = torch.tensor(valid_w, device=self.device).view(-1, 1, 1, 1)
        return ((rows < valid_h) & (cols < valid_w)).float()

    def _decode(self, scores: torch.Tensor, layouts: list[PyramidLayout], threshold: float) -> list[list[Detection]]:
        """Score maps -> per image, detections in pyramid-level coordinates mapped to the image
        (before any upsampling is undone), best first, after non-maximum suppression."""
        convs = self.model.convs()
        valid_h = torch.tensor([conv_output_size(layout.height, convs) for layout in layouts], device=scores.device)
        valid_w = torch.tensor([conv_output_size(layout.width, convs) for layout in layouts], device=scores.device)
        rows = torch.arange(scores.shape[2], device=scores.device).view(1, -1, 1)
        cols = torch.arange(scores.shape[3], device=scores.device).view(1, 1, -1)
        inside = (rows < valid_h.view(-1, 1, 1)) & (cols < valid_w.view(-1, 1, 1))
        hits = ((scores[:, 0] > threshold) & inside).nonzero()
        values = scores[hits[:, 0], 0, hits[:, 1], hits[:, 2]].double().cpu().numpy()
        hits = hits.cpu().numpy()
        window = self.options.windows[0]
        found: list[list[Detection]] = []
        for i, layout in enumerate(layouts):
            mine = hits[:, 0] == i
            rects = self._windows_to_image(hits[mine, 1], hits[mine, 2], window.width, window.height, layout)
            found.append(self._suppress(rects, values[mine]))
        return found

    def _windows_to_image(
        self, r: np.ndarray, c: np.ndarray, width: int, height: int, layout: PyramidLayout
    ) -> np.ndarray:
        """Score positions -> (K, 4) float64 rectangles (l, t, r, b) in image coordinates: the
        window centred on each position's input point, moved from the nearest tile up its level."""
        px = self._scale * c.astype(np.float64) + self._offset
        py = self._scale * r.astype(np.float64) + self._offset
        half_w, half_h = (width - 1) / 2, (height - 1) / 2
        rect = np.stack([px - half_w, py - half_h, px + half_w, py + half_h], axis=1)
        # nearest_rect of the rounded centre: the first tile containing it, else the closest.
        cx = _round((rect[:, 0] + rect[:, 2]) / 2)[:, None]
        cy = _round((rect[:, 1] + rect[:, 3]) / 2)[:, None]
        tiles = layout.tiles
        left = np.array([t.left for t in tiles])[None, :]
        top = np.array([t.top for t in tiles])[None, :]
        right = np.array([t.right for t in tiles])[None, :]
        bottom = np.array([t.bottom for t in tiles])[None, :]
        dx = np.clip(cx, left, right) - cx
        dy = np.clip(cy, top, bottom) - cy
        level = np.argmin(np.sqrt(dx * dx + dy * dy), axis=1)
        rect = rect - np.stack([left[0, level], top[0, level], left[0, level], top[0, level]], axis=1)
        ratio = PYRAMID_FACTOR / (PYRAMID_FACTOR - 1.0)
        for step in range(int(level.max(initial=0))):  # pyramid_down<N>::point_up: p * N/(N-1) + 0.3
            up = level > step
            rect[up] = rect[up] * ratio + 0.3
        return rect

    def _suppress(self, rects: np.ndarray, scores: np.ndarray) -> list[Detection]:
        """Rounded rectangles, best score first, each kept unless it overlaps one kept before."""
        iou, covered = self.options.nms_iou, self.options.nms_percent_covered
        kept: list[Detection] = []
        boxes = _round_rect(rects)
        for k in np.argsort(-scores, kind="stable"):
            box = tuple(int(v) for v in boxes[k])
            if any(_overlaps((d.left, d.top, d.right, d.bottom), box, iou, covered) for d in kept):
                continue
            kept.append(Detection(*box, confidence=float(scores[k])))
        return kept

    @staticmethod
    def _map_back(found: list[Detection], upsample: int) -> list[Detection]:
        """Undo the upsampling: pyramid_down<2>::rect_down, p / 2 - (1.25, 0.75) per level, rounded."""
        if upsample == 0:
            return found
        mapped = []
        for d in found:
            corners = np.array([d.left, d.top, d.right, d.bottom], dtype=np.float64)
            for _ in range(upsample):
                corners = corners / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
            mapped.append(Detection(*(int(v) for v in _round_rect(corners)), confidence=d.confidence))
        return mapped
