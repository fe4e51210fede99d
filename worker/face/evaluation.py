"""Pair evaluation: LFW-format pairs files and verification metrics from distances.

Distances are Euclidean between descriptors: smaller means more alike. A pair is declared a
match when its distance is <= the threshold. Definitions used throughout:
  FMR(t)  = share of impostor (different-person) distances <= t   (false match rate)
  FNMR(t) = share of genuine (same-person) distances > t           (false non-match rate)

Pure functions over numpy arrays; plot_report is the one function that writes a file.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file: two image paths relative to the root, same person or not."""

    first: str
    second: str
    same: bool
    fold: int


def image_path(name: str, number: int) -> str:
    """LFW's file name for image `number` of `name`: "name/name_0001.jpg"."""
    return f"{name}/{name}_{number:04d}.jpg"


def parse_pairs(text: str) -> list[Pair]:
    """Parse an LFW-format pairs file's text into pairs, in file order.

    Header "N": N same-person then N different-person pairs (one fold, numbered 0).
    Header "F N": F folds, each N same-person then N different-person pairs.
    Same lines are `name i j`, different lines `name1 i name2 j` (tabs or spaces).
    Raises ValueError naming the line on any malformed or missing line.
    """
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError("empty pairs file")
    header_no, header = lines[0]
    try:
        numbers = [int(field) for field in header]
    except ValueError:
        raise ValueError(f"line {header_no}: header must be 'N' or 'FOLDS N', got {' '.join(header)!r}") from None
    if len(numbers) == 1:
        folds, per_class = 1, numbers[0]
    elif len(numbers) == 2:
        folds, per_class = numbers
    else:
        raise ValueError(f"line {header_no}: header must be 'N' or 'FOLDS N'")
    if folds < 1 or per_class < 1:
        raise ValueError(f"line {header_no}: folds and pairs per class must be positive")

    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) != expected:
        raise ValueError(f"header promises {expected} pair lines, found {len(body)}")

    pairs = []
    for index, (no, fields) in enumerate(body):
        fold, within = divmod(index, 2 * per_class)
        same = within < per_class
        if same and len(fields) == 3:
            name, i, j = fields
            first, second = image_path(name, _number(i, no)), image_path(name, _number(j, no))
        elif not same and len(fields) == 4:
            name1, i, name2, j = fields
            first, second = image_path(name1, _number(i, no)), image_path(name2, _number(j, no))
        else:
            kind = "same-person 'name i j'" if same else "different-person 'name1 i name2 j'"
            raise ValueError(f"line {no}: expected a {kind} line, got {' '.join(fields)!r}")
        pairs.append(Pair(first, second, same, fold))
    return pairs


def _number(field: str, line_no: int) -> int:
    try:
        return int(field)
    except ValueError:
        raise ValueError(f"line {line_no}: image number must be an integer, got {field!r}") from None


def read_pairs(path: Path) -> list[Pair]:
    """parse_pairs on a file's text."""
    return parse_pairs(Path(path).read_text())


def _arrays(genuine, impostor) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(genuine, dtype=np.float64).ravel()
    i = np.asarray(impostor, dtype=np.float64).ravel()
    if g.size == 0 or i.size == 0:
        raise ValueError("need at least one genuine and one impostor distance")
    return g, i


def accuracy_at(genuine, impostor, threshold: float) -> float:
    """Share of pairs classified right when distance <= threshold means "same person"."""
    g, i = _arrays(genuine, impostor)
    right = np.count_nonzero(g <= threshold) + np.count_nonzero(i > threshold)
    return right / (g.size + i.size)


def best_threshold(genuine, impostor) -> tuple[float, float]:
    """The threshold with the highest accuracy on these distances: (threshold, accuracy).

    Candidates are the midpoints between consecutive distinct distances (and points just
    outside both ends); among equally good ones the middle candidate is taken.
    """
    g, i = _arrays(genuine, impostor)
    values = np.unique(np.concatenate([g, i]))
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    g_sorted, i_sorted = np.sort(g), np.sort(i)
    genuine_accepted = np.searchsorted(g_sorted, candidates, side="right")
    impostor_rejected = i.size - np.searchsorted(i_sorted, candidates, side="right")
    right = genuine_accepted + impostor_rejected
    best = np.flatnonzero(right == right.max())
    chosen = best[len(best) // 2]
    return float(candidates[chosen]), float(right[chosen] / (g.size + i.size))


@dataclass(frozen=True)
class CrossValidated:
    """Best-threshold accuracy; with several folds, each fold scored at a threshold from the rest."""

    accuracy: float  # mean over folds (or the plain best accuracy with one fold)
    thresholds: list[float]  # one per fold
    fold_accuracies: list[float]


def cross_validated_accuracy(distances, same, folds) -> CrossValidated:
    """Best-threshold accuracy, cross-validated over folds when there are more than one.

    distances, same, folds: one entry per pair (float, bool, int fold number). With F > 1
    folds, fold k is scored at the threshold best on the other F - 1 folds, and the accuracy
    is the mean over folds. With one fold, the threshold is chosen on all pairs (optimistic).
    """
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same, dtype=bool)
    f = np.asarray(folds)
    if not (d.shape == s.shape == f.shape):
        raise ValueError("distances, same and folds must have one entry per pair")
    fold_ids = np.unique(f)
    if fold_ids.size < 2:
        threshold, accuracy = best_threshold(d[s], d[~s])
        return CrossValidated(accuracy, [threshold], [accuracy])
    thresholds, accuracies = [], []
    for fold in fold_ids:
        test, train = f == fold, f != fold
        threshold, _ = best_threshold(d[train & s], d[train & ~s])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(d[test & s], d[test & ~s], threshold))
    return CrossValidated(float(np.mean(accuracies)), thresholds, accuracies)


def det_curve(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DET points (thresholds, fmr, fnmr), thresholds rising; FMR rises from 0, FNMR falls to 0.

    The first threshold is -inf (nothing matches), then every distinct distance.
    """
    g, i = _arrays(genuine, impostor)
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([g, i]))])
    fmr = np.searchsorted(np.sort(i), thresholds, side="right") / i.size
    fnmr = 1.0 - np.searchsorted(np.sort(g), thresholds, side="right") / g.size
    return thresholds, fmr, fnmr


def equal_error_rate(genuine, impostor) -> tuple[float, float]:
    """(EER, threshold): where FMR equals FNMR, interpolated linearly between DET points."""
    thresholds, fmr, fnmr = det_curve(genuine, impostor)
    gap = fnmr - fmr  # starts at 1, falls to -1
    k = int(np.argmax(gap <= 0))
    if gap[k] == 0:
        return float(fmr[k]), float(thresholds[k])
    alpha = gap[k - 1] / (gap[k - 1] - gap[k])
    eer = fmr[k - 1] + alpha * (fmr[k] - fmr[k - 1])
    low = thresholds[k - 1] if np.isfinite(thresholds[k - 1]) else thresholds[k]
    return float(eer), float(low + alpha * (thresholds[k] - low))


def threshold_at_fmr(impostor, fmr: float) -> float | None:
    """The threshold for a target FMR: distances strictly below it match.

    Returns the smallest impostor distance that must be rejected, so at most floor(fmr * n)
    impostors fall below it; None when there are too few impostors (fmr * n < 1).
    """
    i = np.sort(np.asarray(impostor, dtype=np.float64).ravel())
    allowed = int(np.floor(fmr * i.size + 1e-9))
    if allowed < 1:
        return None
    if allowed >= i.size:
        return float("inf")
    return float(i[allowed])


def fnmr_at_fmr(genuine, impostor, fmr: float) -> float | None:
    """FNMR at the threshold where FMR is at most `fmr`.

    None when 1/fmr exceeds the number of impostor pairs: there are not enough impostor
    pairs to measure that FMR.
    """
    g, i = _arrays(genuine, impostor)
    threshold = threshold_at_fmr(i, fmr)
    if threshold is None:
        return None
    return float(np.count_nonzero(g >= threshold) / g.size)


def summary(distances, same, folds, threshold: float = 0.6) -> dict:
    """The numbers eval-pairs reports, as fractions; keys:

    accuracy_at_0_6 (at `threshold`), best_accuracy, best_threshold (mean over folds), eer,
    eer_threshold, fnmr_at_fmr_1e-2, fnmr_at_fmr_1e-3 (None when too few impostors),
    genuine, impostor (counts).
    """
    d = np.asarray(distances, dtype=np.float64)
    s = np.asarray(same, dtype=bool)
    g, i = d[s], d[~s]
    best = cross_validated_accuracy(d, s, folds)
    eer, eer_threshold = equal_error_rate(g, i)
    return {
        "accuracy_at_0_6": accuracy_at(g, i, threshold),
        "best_accuracy": best.accuracy,
        "best_threshold": float(np.mean(best.thresholds)),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "fnmr_at_fmr_1e-2": fnmr_at_fmr(g, i, 1e-2),
        "fnmr_at_fmr_1e-3": fnmr_at_fmr(g, i, 1e-3),
        "genuine": int(g.size),
        "impostor": int(i.size),
    }


def plot_report(series: dict[str, tuple], threshold: float, path: Path, title: str = "") -> Path:
    """Write a PNG: the DET curve and genuine/impostor histograms of each series.

    series: label -> (genuine distances, impostor distances); threshold: marked on the
    histograms and (as its FMR/FNMR point) on the DET curve. Returns path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(series)
    fig = plt.figure(figsize=(11, max(4.5, 3.5 * rows)))
    grid = fig.add_gridspec(rows, 2)
    det_ax = fig.add_subplot(grid[:, 0])
    floor = 1e-4
    for row, (label, (genuine, impostor)) in enumerate(series.items()):
        g, i = _arrays(genuine, impostor)
        _, fmr, fnmr = det_curve(g, i)
        line = det_ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor), label=label)[0]
        at_fmr = np.count_nonzero(i <= threshold) / i.size
        at_fnmr = np.count_nonzero(g > threshold) / g.size
        det_ax.plot([max(at_fmr, floor)], [max(at_fnmr, floor)], "o", color=line.get_color())

        hist = fig.add_subplot(grid[row, 1])
        bins = np.linspace(min(g.min(), i.min()), max(g.max(), i.max()), 50)
        hist.hist(g, bins=bins, alpha=0.6, label=f"genuine ({g.size})", color="tab:green")
        hist.hist(i, bins=bins, alpha=0.6, label=f"impostor ({i.size})", color="tab:red")
        hist.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
        hist.set_title(f"{label}: distance histograms")
        hist.set_xlabel("Euclidean distance")
        hist.set_ylabel("pairs")
        hist.legend()

    det_ax.set_xscale("log")
    det_ax.set_yscale("log")
    det_ax.set_xlim(floor, 1)
    det_ax.set_ylim(floor, 1)
    det_ax.set_xlabel("FMR (false match rate)")
    det_ax.set_ylabel("FNMR (false non-match rate)")
    det_ax.set_title(f"DET curve (dots: threshold {threshold:g})")
    det_ax.grid(True, which="both", alpha=0.3)
    det_ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
