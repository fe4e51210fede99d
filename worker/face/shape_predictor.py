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
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from worker.face.dlib_format import Reader
from worker.face.types import Box

CACHE_LAYOUT = 1  # bump when read_shape_predictor changes what it produces

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
    if initial.size == 0 or initial.size % 2:
        raise r.fail(f"initial shape has {initial.size} values; expected an even, positive count")
    stages = r.int("number of stages")
    splits, thresholds, leaves = [], [], []
    tree_count = node_count = None  # of the first stage and tree; the others must match
    for s in range(stages):
        trees = r.int(f"number of trees in stage {s}")
        if trees != (tree_count := tree_count or trees) or trees < 1:
            raise r.fail(f"stage {s} has {trees} trees, stage 0 has {tree_count}")
        stage_splits, stage_thresholds, stage_leaves = [], [], []
        for t in range(trees):
            nodes = r.int("number of splits")
            if nodes != (node_count := node_count or nodes) or nodes < 1 or nodes & (nodes + 1):
                raise r.fail(f"stage {s} tree {t}: {nodes} splits; expected a full tree like the first")
            node_values = [(r.int("idx1"), r.int("idx2"), r.float("thresh")) for _ in range(nodes)]
            at = r.offset
            leaf_values = r.sequence(lambda rr: rr.matrix("leaf").reshape(-1), "leaves")
            if len(leaf_values) != nodes + 1 or any(v.size != initial.size for v in leaf_values):
                raise r.fail(f"stage {s} tree {t}: leaves do not match {nodes} splits and the shape", at)
            stage_splits.append([v[:2] for v in node_values])
            stage_thresholds.append([v[2] for v in node_values])
            stage_leaves.append(leaf_values)
        splits.append(stage_splits)
        thresholds.append(stage_thresholds)
        leaves.append(stage_leaves)
    at = r.offset
    anchors = r.sequence(lambda rr: rr.sequence(Reader.int, "anchor indices"), "anchors")
    deltas = r.sequence(lambda rr: rr.sequence(lambda q: (q.float("dx"), q.float("dy")), "deltas"), "deltas")
    r.end()
    if len(anchors) != stages or len(deltas) != stages or len({len(a) for a in anchors + deltas}) > 1:
        raise r.fail("anchors and deltas do not give the same feature pixels for every stage", at)
    model = ShapeModel(
        initial_shape=initial.astype(np.float32),
        splits=np.array(splits, dtype=np.int64).reshape(stages, tree_count, node_count, 2),
        thresholds=np.array(thresholds, dtype=np.float32).reshape(stages, tree_count, node_count),
        leaves=np.array(leaves, dtype=np.float32).reshape(stages, tree_count, node_count + 1, initial.size),
        anchors=np.array(anchors, dtype=np.int64).reshape(stages, -1),
        deltas=np.array(deltas, dtype=np.float32).reshape(stages, -1, 2),
    )
    features = model.anchors.shape[1]
    if model.splits.size and (model.splits.min() < 0 or model.splits.max() >= features):
        raise r.fail(f"a split compares a feature pixel outside 0..{features - 1}", at)
    if model.anchors.size and (model.anchors.min() < 0 or model.anchors.max() >= model.parts):
        raise r.fail(f"a feature pixel is anchored to a landmark outside 0..{model.parts - 1}", at)
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


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB or (H, W) grey uint8 -> (H, W) uint8 intensity, (r + g + b) // 3 as dlib."""
    if image.ndim == 2:
        return np.ascontiguousarray(image, dtype=np.uint8)
    return (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)


class ShapePredictor:
    """A shape predictor's arrays, and landmarks for many faces at a time."""

    def __init__(self, model: ShapeModel, sha256: str = ""):
        self.model = model
        self.sha256 = sha256
        stages, trees, nodes = model.thresholds.shape
        # Flat per stage: node n of tree t at t * nodes + n, leaf l of tree t at t * leaves + l.
        self._first = model.splits[..., 0].reshape(stages, -1)
        self._second = model.splits[..., 1].reshape(stages, -1)
        self._thresholds = model.thresholds.reshape(stages, -1)
        self._leaves = model.leaves.reshape(stages, -1, model.initial_shape.size)
        self._node_base = (np.arange(trees) * nodes)[None, :]
        self._leaf_base = (np.arange(trees) * (nodes + 1))[None, :]

    @classmethod
    def load(cls, path: Path | None = None, cache_dir: Path | None = None) -> "ShapePredictor":
        """path: the .dat (default: shape_predictor_5_face_landmarks.dat of face-recognition-models).
        cache_dir: where the arrays are kept as `<sha256>.shape.npz` (reading the .dat takes
        seconds); None reads the .dat every time."""
        from worker.face.weights import SHAPE_PREDICTOR_5, model_path, sha256_file

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
        m = self.model
        faces = len(boxes)
        if faces == 0:
            return np.zeros((0, m.parts, 2))
        flat, offset, height, width = self._pixels(images)
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
            index = np.where(inside, offset + py * width + px, 0)
            features = np.where(inside, flat[index], 0).astype(np.float32)
            shape = self._run_stage(stage, features, shape)
        points = shape.reshape(faces, -1, 2).astype(np.float64)
        return np.stack([_round(scale_x * points[..., 0] + left), _round(scale_y * points[..., 1] + top)], axis=-1)

    def _pixels(self, images: list[np.ndarray]):
        """Grey images concatenated; per face its offset, height and width, as (F, 1) arrays."""
        first_face = {}
        for image in images:
            first_face.setdefault(id(image), image)
        greys, starts, size = {}, {}, 0
        for key, image in first_face.items():
            greys[key] = grey(image)
            starts[key] = size
            size += greys[key].size
        flat = np.concatenate([g.reshape(-1) for g in greys.values()])
        offset = np.array([starts[id(i)] for i in images], dtype=np.int64)[:, None]
        height = np.array([greys[id(i)].shape[0] for i in images], dtype=np.int64)[:, None]
        width = np.array([greys[id(i)].shape[1] for i in images], dtype=np.int64)[:, None]
        return flat, offset, height, width

    def _run_stage(self, stage: int, features: np.ndarray, shape: np.ndarray) -> np.ndarray:
        """All trees of a stage on (F, K) feature values; the leaf updates are added to (F, 2P)
        shapes one tree after another in float32, as dlib adds them."""
        faces, pixels = features.shape
        rows = (np.arange(faces) * pixels)[:, None]
        flat = features.reshape(-1)
        node = np.zeros((faces, self._node_base.shape[1]), dtype=np.int64)
        for _ in range(self.model.depth):
            at = self._node_base + node
            first = flat.take(rows + self._first[stage].take(at))
            second = flat.take(rows + self._second[stage].take(at))
            node = 2 * node + np.where(first - second > self._thresholds[stage].take(at), 1, 2)
        leaf = self._leaf_base + node - self.model.thresholds.shape[2]
        updates = self._leaves[stage].take(leaf, axis=0)  # (F, T, 2P)
        steps = np.concatenate([shape[:, :, None], updates.transpose(0, 2, 1)], axis=2)
        return np.cumsum(steps, axis=2, dtype=np.float32)[:, :, -1]


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
    """Writes a temp file in the same folder, then renames it: readers never see a partial file."""
    arrays = {f.name: getattr(model, f.name) for f in fields(ShapeModel)}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, layout=CACHE_LAYOUT, **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:  # a read-only cache folder costs time, not correctness
        log.warning("shape predictor cache not written", extra={"cache_file": str(cache_file), "error": repr(error)})
