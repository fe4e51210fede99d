"""dlib's shape predictor (shape_predictor_5_face_landmarks.dat) in numpy, over many faces at once.

ShapePredictor.load(cache_dir).predict(images, boxes) -> (F, parts, 2) landmarks, the points
dlib.shape_predictor gives (integers, as dlib rounds them). The model is a cascade of stages, each
an ensemble of regression trees (15 x 500 trees of depth 4 in this file). Per stage:
1. the similarity transform from the mean shape to the current shape (least squares, float32);
2. 800 feature pixels: each an offset from one landmark of the mean shape, moved with that
   landmark and the transform, mapped from the unit square to the face box and rounded; its grey
   value ((r + g + b) // 3), or 0 outside the image;
3. every tree compares two feature pixels with a threshold at each level, and its leaf's vector
   (an update of all landmarks) is added to the shape, tree after tree in float32.
Shapes live in box coordinates: (0, 0) is the box's top-left corner, (1, 1) its bottom-right.
"""

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from worker.face.dlib_format import Reader, floats_from_pairs
from worker.face.types import Box
from worker.face.weights import SHAPE_PREDICTOR_5, model_path, sha256_file, write_cache_file

CACHE_LAYOUT = 1  # bump when read_shape_predictor changes what it produces
CHUNK_FACES = 32  # faces per vectorised pass: larger arrays stop fitting the CPU caches

log = logging.getLogger(__name__)


@dataclass
class ShapeModel:
    """The arrays of a shape predictor file, stacked over stages (S), trees (T), split nodes (N),
    leaves (L = N + 1), feature pixels (K) and landmark coordinates (2P, x then y per point)."""

    initial_shape: np.ndarray  # (2P,) float32, the mean shape
    splits: np.ndarray  # (S, T, N, 2) int64, the two feature pixels each node compares
    thresholds: np.ndarray  # (S, T, N) float32
    leaves: np.ndarray  # (S, T, L, 2P) float32, the shape update of each leaf
    anchors: np.ndarray  # (S, K) int64, the landmark each feature pixel moves with
    deltas: np.ndarray  # (S, K, 2) float32, its offset from that landmark in the mean shape

    @property
    def parts(self) -> int:
        return self.initial_shape.size // 2

    @property
    def depth(self) -> int:
        return int(np.log2(self.leaves.shape[2]))


def read_shape_predictor(data: bytes) -> ShapeModel:
    """The bytes of a dlib shape predictor file -> ShapeModel.

    Layout (dlib/image_processing/shape_predictor.h): version 1; the initial shape (a matrix);
    the forests, a vector per stage of trees, each a vector of splits (idx1, idx2, thresh) and a
    vector of leaf matrices; then per stage the anchor index and the (x, y) delta of each feature
    pixel. Every stage must have as many trees, every tree as many levels, as the first; any other
    layout raises WeightsFormatError naming the byte offset."""
    r = Reader(data)
    r.expect_int(1, "shape predictor version")
    initial = r.matrix("initial shape").reshape(-1)
    size = initial.size
    if size == 0 or size % 2:
        raise r.fail(f"initial shape has {size} values; expected an even, positive count")
    stages = r.int("number of stages")
    if stages < 1:
        raise r.fail(f"{stages} stages")
    split_ints, leaf_ints = [], []  # per tree: (idx1, idx2, mantissa, exponent) x N; (rows, cols, 2 x 2P) x L
    trees = nodes = None  # of the first stage and tree; the others must match
    for s in range(stages):
        at = r.offset
        count = r.int(f"number of trees in stage {s}")
        if count != (trees := trees or count) or count < 1:
            raise r.fail(f"stage {s} has {count} trees, stage 0 has {trees}", at)
        for t in range(count):
            at = r.offset
            found = r.int("number of splits")
            if found != (nodes := nodes or found) or found < 1 or found & (found + 1):
                raise r.fail(f"stage {s} tree {t}: {found} splits; expected a full tree like the first", at)
            split_ints.append(r.ints(4 * nodes, "split value"))
            r.expect_int(nodes + 1, f"number of leaves of stage {s} tree {t}")
            leaf_ints.append(r.ints((nodes + 1) * (2 + 2 * size), "leaf value"))
    splits = np.array(split_ints, dtype=np.int64).reshape(stages, trees, nodes, 4)
    leaves = np.array(leaf_ints, dtype=np.int64).reshape(stages, trees, nodes + 1, 2 + 2 * size)
    if (np.abs(leaves[..., 0]) * np.abs(leaves[..., 1]) != size).any():
        raise r.fail(f"a leaf is not a vector of {size} values")
    at = r.offset
    r.expect_int(stages, "number of anchor vectors")
    anchors = [r.ints(r.int("number of anchors"), "anchor index") for _ in range(stages)]
    r.expect_int(stages, "number of delta vectors")
    deltas = [r.float_array(2 * r.int("number of deltas"), "delta") for _ in range(stages)]
    r.end()
    if len({len(a) for a in anchors} | {len(d) // 2 for d in deltas}) != 1:
        raise r.fail("anchors and deltas do not give the same feature pixels for every stage", at)
    model = ShapeModel(
        initial_shape=initial.astype(np.float32),
        splits=splits[..., :2].copy(),
        thresholds=floats_from_pairs(splits[..., 2].ravel(), splits[..., 3].ravel())
        .astype(np.float32)
        .reshape(stages, trees, nodes),
        leaves=floats_from_pairs(leaves[..., 2::2].ravel(), leaves[..., 3::2].ravel())
        .astype(np.float32)
        .reshape(stages, trees, nodes + 1, size),
        anchors=np.array(anchors, dtype=np.int64),
        deltas=np.array(deltas, dtype=np.float32).reshape(stages, -1, 2),
    )
    features = model.anchors.shape[1]
    if model.splits.min() < 0 or model.splits.max() >= features:
        raise r.fail(f"a split compares a feature pixel outside 0..{features - 1}", at)
    if model.anchors.min() < 0 or model.anchors.max() >= model.parts:
        raise r.fail(f"a feature pixel is anchored to a landmark outside 0..{model.parts - 1}", at)
    if not (np.isfinite(model.thresholds).all() and np.isfinite(model.leaves).all()):
        raise r.fail("a threshold or leaf value is not finite", at)
    return model


def _round(values: np.ndarray) -> np.ndarray:
    """dlib's conversion of coordinates to integer points: floor(v + 0.5)."""
    return np.floor(values + 0.5)


def similarity(source: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation and scale, no reflection) from one shape to each of
    many: source (P, 2), targets (F, P, 2) -> (F, 2, 2) float32 matrices (dlib's
    find_similarity_transform, whose translation the predictor does not use)."""
    s = source[:, 0].astype(np.float64) + 1j * source[:, 1].astype(np.float64)
    d = targets[..., 0].astype(np.float64) + 1j * targets[..., 1].astype(np.float64)
    sc = s - s.mean()
    dc = d - d.mean(axis=1, keepdims=True)
    m = (np.conj(sc)[None, :] * dc).sum(axis=1) / np.sum(np.abs(sc) ** 2)
    return np.stack([np.stack([m.real, -m.imag], -1), np.stack([m.imag, m.real], -1)], -2).astype(np.float32)


class ShapePredictor:
    """A shape predictor's arrays, and landmarks for many faces at a time."""

    def __init__(self, model: ShapeModel, sha256: str = ""):
        self.model = model
        self.sha256 = sha256
        stages, trees, nodes = model.thresholds.shape
        # Flat per stage: node n of tree t at t * nodes + n, leaf l of tree t at t * leaves + l.
        self._pairs = model.splits.reshape(stages, -1, 2).astype(np.int32)
        # Feature values are integers (0..255), so `a - b > t` holds exactly when a - b > floor(t).
        self._thresholds = np.floor(np.clip(model.thresholds, -256, 256)).astype(np.int16).reshape(stages, -1)
        self._leaves = model.leaves.reshape(stages, -1, model.initial_shape.size)
        self._node_base = (np.arange(trees, dtype=np.int32) * nodes)[None, :]
        self._leaf_base = (np.arange(trees, dtype=np.int32) * (nodes + 1))[None, :]

    @classmethod
    def load(cls, path: Path | None = None, cache_dir: Path | None = None) -> "ShapePredictor":
        """path: the .dat (default: shape_predictor_5_face_landmarks.dat of face-recognition-models).
        cache_dir: where the arrays are kept as `<sha256>.shape.npz` (reading the .dat takes
        seconds); None reads the .dat every time."""
        path = Path(path) if path is not None else model_path(SHAPE_PREDICTOR_5)
        sha = sha256_file(path)
        cache_file = Path(cache_dir) / f"{sha}.shape.npz" if cache_dir is not None else None
        model = _read_cache(cache_file) if cache_file is not None and cache_file.is_file() else None
        if model is None:
            model = read_shape_predictor(path.read_bytes())
            if cache_file is not None:
                _write_cache(cache_file, model)
        return cls(model, sha)

    def predict(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        """images[i]: (H, W, 3) RGB or (H, W) grey uint8, the image of face i (the same array may
        appear for several faces); boxes[i]: that face's box. Returns (F, parts, 2) float64 (x, y)
        image points, integers as dlib's."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images for {len(boxes)} boxes")
        if not boxes:
            return np.zeros((0, self.model.parts, 2))
        chunks = range(0, len(boxes), CHUNK_FACES)
        return np.concatenate([self._predict(images[i : i + CHUNK_FACES], boxes[i : i + CHUNK_FACES]) for i in chunks])

    def _predict(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        """predict() on one chunk of faces."""
        m = self.model
        faces = len(boxes)
        groups = self._by_image(images)
        height = np.array([i.shape[0] for i in images], dtype=np.int64)[:, None]
        width = np.array([i.shape[1] for i in images], dtype=np.int64)[:, None]
        left = np.array([b.left for b in boxes], dtype=np.float64)[:, None]
        top = np.array([b.top for b in boxes], dtype=np.float64)[:, None]
        scale_x = np.array([b.right - b.left for b in boxes], dtype=np.float64)[:, None]
        scale_y = np.array([b.bottom - b.top for b in boxes], dtype=np.float64)[:, None]
        mean_points = m.initial_shape.reshape(-1, 2)
        shape = np.tile(m.initial_shape, (faces, 1))
        for stage in range(m.leaves.shape[0]):
            points = shape.reshape(faces, -1, 2)
            tform = similarity(mean_points, points)
            anchor = points[:, m.anchors[stage]]  # (F, K, 2)
            dx, dy = m.deltas[stage, :, 0], m.deltas[stage, :, 1]
            x = (tform[:, 0, 0, None] * dx + tform[:, 0, 1, None] * dy) + anchor[..., 0]
            y = (tform[:, 1, 0, None] * dx + tform[:, 1, 1, None] * dy) + anchor[..., 1]
            px = _round(scale_x * x.astype(np.float64) + left).astype(np.int64)
            py = _round(scale_y * y.astype(np.float64) + top).astype(np.int64)
            inside = (px >= 0) & (py >= 0) & (px < width) & (py < height)
            pixel = np.where(inside, py * width + px, 0)
            features = np.zeros(pixel.shape, dtype=np.int16)
            for flat, rows in groups:
                if flat.ndim == 1:  # grey
                    features[rows] = flat.take(pixel[rows])
                else:  # dlib's grey of an RGB pixel: (r + g + b) / 3
                    rgb = flat.take(pixel[rows], axis=0).astype(np.int16)
                    features[rows] = (rgb[..., 0] + rgb[..., 1] + rgb[..., 2]) // 3
            features[~inside] = 0
            shape = self._run_stage(stage, features, shape)
        points = shape.reshape(faces, -1, 2).astype(np.float64)
        return np.stack([_round(scale_x * points[..., 0] + left), _round(scale_y * points[..., 1] + top)], axis=-1)

    @staticmethod
    def _by_image(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(pixels of one image, flat: (H*W,) grey or (H*W, 3) RGB; the rows of its faces)."""
        rows: dict[int, list[int]] = {}
        for i, image in enumerate(images):
            rows.setdefault(id(image), []).append(i)
        groups = []
        for face_rows in rows.values():
            image = images[face_rows[0]]
            flat = image.reshape(-1) if image.ndim == 2 else image.reshape(-1, image.shape[2])
            groups.append((flat, np.array(face_rows)))
        return groups

    def _run_stage(self, stage: int, features: np.ndarray, shape: np.ndarray) -> np.ndarray:
        """All trees of a stage on (F, K) int16 feature values; the leaf updates are added to
        (F, 2P) shapes one tree after another in float32, as dlib adds them."""
        faces, pixels = features.shape
        flat = features.reshape(-1)
        rows = (np.arange(faces, dtype=np.int32) * pixels)[:, None, None]
        node = np.zeros((faces, self._node_base.shape[1]), dtype=np.int32)
        for _ in range(self.model.depth):  # left child 2n + 1 when a - b > threshold, else 2n + 2
            at = self._node_base + node
            values = flat.take(rows + self._pairs[stage].take(at, axis=0))  # (F, T, 2)
            node = 2 * node + 2 - ((values[..., 0] - values[..., 1]) > self._thresholds[stage].take(at))
        leaf = self._leaf_base + node - self.model.thresholds.shape[2]
        steps = np.empty((faces, leaf.shape[1] + 1, shape.shape[1]), dtype=np.float32)
        steps[:, 0] = shape
        self._leaves[stage].take(leaf, axis=0, out=steps[:, 1:])  # (F, T, 2P) leaf updates
        # A sum along an axis that is not the innermost one adds the terms one by one, in order
        # (numpy sums pairwise only along the innermost axis): the float32 result of dlib's loop.
        return np.add.reduce(steps, axis=1, dtype=np.float32)


def _read_cache(cache_file: Path) -> ShapeModel | None:
    """The cached arrays, or None when the file is unreadable or for another layout."""
    try:
        with np.load(cache_file, allow_pickle=False) as saved:
            if int(saved["layout"]) != CACHE_LAYOUT:
                return None
            return ShapeModel(**{f.name: saved[f.name] for f in fields(ShapeModel)})
    except Exception as error:  # a torn or foreign file: read the .dat again and replace it
        log.warning("shape predictor cache unreadable, reading the model again",
                    extra={"cache_file": str(cache_file), "error": repr(error)})  # fmt: skip
        return None


def _write_cache(cache_file: Path, model: ShapeModel) -> None:
    arrays = {f.name: getattr(model, f.name) for f in fields(ShapeModel)}
    write_cache_file(cache_file, lambda f: np.savez(f, layout=CACHE_LAYOUT, **arrays), "shape predictor")
