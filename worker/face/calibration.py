"""Threshold calibration from genuine and impostor distances (smaller = more alike).

A pair matches when its distance is <= the threshold, as the worker decides.
  match_threshold_at_fmr(impostor, fmr) -> the threshold whose FMR on these impostors is at most
      fmr (halfway between the last impostor allowed to match and the first one rejected), or
      None when there are fewer than 1 / fmr impostors.
  fmr_at(impostor, t), fnmr_at(genuine, t) -> rates at a threshold.
  bootstrap_interval(genuine, impostor, fmr, rounds, seed, level) -> (low, high) of the threshold.
  calibrate(genuine, impostor, target_fmr, rounds) -> dict (see its docstring).
"""

import numpy as np

from worker.face.evaluation import equal_error_rate

REPORTED_FMRS = (1e-2, 1e-3, 1e-4)


def _sorted(values) -> np.ndarray:
    return np.sort(np.asarray(values, dtype=np.float64).ravel())


def min_impostors(fmr: float) -> int:
    """Impostor pairs needed to measure an FMR: one false match must be allowed."""
    return int(np.ceil(1.0 / fmr - 1e-9))


def match_threshold_at_fmr(impostor, fmr: float) -> float | None:
    i = _sorted(impostor)
    allowed = int(np.floor(fmr * i.size + 1e-9))
    if i.size == 0 or allowed < 1:
        return None
    if allowed >= i.size:
        return float(i[-1])
    return float((i[allowed - 1] + i[allowed]) / 2)


def fmr_at(impostor, threshold: float) -> float:
    i = np.asarray(impostor, dtype=np.float64).ravel()
    return float(np.count_nonzero(i <= threshold) / i.size)


def fnmr_at(genuine, threshold: float) -> float:
    g = np.asarray(genuine, dtype=np.float64).ravel()
    return float(np.count_nonzero(g > threshold) / g.size)


def bootstrap_interval(
    genuine, impostor, fmr: float, rounds: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile interval of match_threshold_at_fmr over impostor sets resampled with replacement
    (pairs taken as independent). None when the FMR cannot be measured."""
    i = np.asarray(impostor, dtype=np.float64).ravel()
    if match_threshold_at_fmr(i, fmr) is None or rounds < 1:
        return None
    rng = np.random.default_rng(seed)
    allowed = int(np.floor(fmr * i.size + 1e-9))
    values = []
    for _ in range(rounds):
        sample = i[rng.integers(0, i.size, size=i.size)]
        low_two = np.partition(sample, [allowed - 1, min(allowed, i.size - 1)])
        values.append((low_two[allowed - 1] + low_two[min(allowed, i.size - 1)]) / 2)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def calibrate(genuine, impostor, target_fmr: float = 1e-3, rounds: int = 200, seed: int = 0) -> dict:
    """The calibration report (fractions, not percents):
    genuine, impostor (counts); eer, eer_threshold; fnmr_at_fmr: {fmr: FNMR or None};
    target_fmr; threshold (None when too few impostors); threshold_low / threshold_high (95%
    bootstrap interval); fmr, fnmr (at threshold, on these distances); min_impostors (needed
    for target_fmr)."""
    g, i = _sorted(genuine), _sorted(impostor)
    if g.size == 0 or i.size == 0:
        raise ValueError("need at least one genuine and one impostor distance")
    eer, eer_threshold = equal_error_rate(g, i)
    at = {}
    for fmr in REPORTED_FMRS:
        t = match_threshold_at_fmr(i, fmr)
        at[fmr] = None if t is None else fnmr_at(g, t)
    threshold = match_threshold_at_fmr(i, target_fmr)
    interval = bootstrap_interval(g, i, target_fmr, rounds, seed)
    return {
        "genuine": int(g.size),
        "impostor": int(i.size),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "fnmr_at_fmr": at,
        "target_fmr": target_fmr,
        "threshold": threshold,
        "threshold_low": interval[0] if interval else None,
        "threshold_high": interval[1] if interval else None,
        "fmr": fmr_at(i, threshold) if threshold is not None else None,
        "fnmr": fnmr_at(g, threshold) if threshold is not None else None,
        "min_impostors": min_impostors(target_fmr),
    }


def plot_calibration(genuine, impostor, report: dict, path, title: str = ""):
    """Write a PNG: the DET curve with the chosen threshold's point, and the genuine and impostor
    distance densities with the threshold (and its bootstrap interval) marked. Returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worker.face.evaluation import det_curve

    g, i = _sorted(genuine), _sorted(impostor)
    threshold = report["threshold"] if report.get("threshold") is not None else report["eer_threshold"]
    label = f"FMR {report['target_fmr']:g}" if report.get("threshold") is not None else "EER"
    fig, (det_ax, hist_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    floor = min(1e-4, 1.0 / i.size)
    _, fmr, fnmr = det_curve(g, i)
    det_ax.plot(np.maximum(fmr, floor), np.maximum(fnmr, floor))
    det_ax.plot(
        [max(fmr_at(i, threshold), floor)],
        [max(fnmr_at(g, threshold), floor)],
        "o",
        color="black",
        label=f"threshold {threshold:.4f} ({label})",
    )
    det_ax.set(
        xscale="log",
        yscale="log",
        xlim=(floor, 1),
        ylim=(floor, 1),
        xlabel="FMR (false match rate)",
        ylabel="FNMR (false non-match rate)",
        title=f"DET curve, EER {100 * report['eer']:.2f}%",
    )
    det_ax.grid(True, which="both", alpha=0.3)
    det_ax.legend()
    bins = np.linspace(min(g[0], i[0]), max(g[-1], i[-1]), 60)
    hist_ax.hist(g, bins=bins, density=True, alpha=0.6, color="tab:green", label=f"genuine ({g.size:,})")
    hist_ax.hist(i, bins=bins, density=True, alpha=0.6, color="tab:red", label=f"impostor ({i.size:,})")
    hist_ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4f}")
    if report.get("threshold_low") is not None:
        hist_ax.axvspan(
            report["threshold_low"], report["threshold_high"], color="grey", alpha=0.3, label="95% bootstrap interval"
        )
    hist_ax.set(xlabel="Euclidean distance", ylabel="density", title="score distributions")
    hist_ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
