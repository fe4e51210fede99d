"""The benchmarks' helpers: percentiles, summaries, the knee rule, JSON results, the load plot."""

import json
import math
import os

import numpy as np
import pytest

from bench.harness import verify_bodies
from bench.load import PeakRss, plot
from bench.stats import max_rate_under, percentile, summarize, write_results


@pytest.mark.parametrize("q", [0, 1, 50, 95, 99, 100])
def test_percentile_matches_numpy(q):
    values = [0.3, 5.0, 1.25, 9.5, 2.0, 2.0, 7.75]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, math.inf], 99) == math.inf  # an unfinished job is never hidden
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_counts_unfinished_as_infinite():
    summary = summarize([1.0, 2.0, 3.0, math.inf])
    assert summary["n"] == 4
    assert summary["p50"] == 2.5
    assert summary["p99"] == math.inf
    assert math.isnan(summary["mean"])
    assert summarize([1.0, 3.0])["mean"] == 2.0


def test_max_rate_under_stops_at_the_knee():
    steps = [
        {"rate": 10, "completion_p95_s": 0.4},
        {"rate": 2, "completion_p95_s": 0.2},
        {"rate": 20, "completion_p95_s": 3.0},
        {"rate": 40, "completion_p95_s": 0.9},  # past the knee: not counted again
    ]
    assert max_rate_under(steps, 1.0) == 10
    assert max_rate_under([{"rate": 5, "completion_p95_s": math.inf}], 1.0) is None
    assert max_rate_under([], 1.0) is None


def test_write_results_is_strict_json(tmp_path):
    path = write_results(tmp_path / "sub" / "r.json", {"jobs_per_s": {"1": 2.5}, "p99": math.inf, "x": [math.nan]})
    data = json.loads(path.read_text())  # json.loads accepts NaN; check the text too
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert data["jobs_per_s"] == {"1": 2.5}
    assert data["p99"] is None and data["x"] == [None]
    assert "date" in data


def test_verify_bodies_alternate_genuine_and_impostor_claims():
    faces = {name: [bytes([i, j]) for j in range(5)] for i, name in enumerate(["a", "b", "c"])}
    bodies = verify_bodies(faces, 12)
    assert len(bodies) == 12
    assert bodies[0]["subject_id"] == "a"  # a's 4th image, claimed as a
    assert bodies[1]["subject_id"] == "b"  # a's 5th image, claimed as b
    assert {b["subject_id"] for b in bodies} == {"a", "b", "c"}


def test_peak_rss_sees_this_process():
    with PeakRss({"me": os.getpid()}, interval_s=0.01) as memory:
        block = bytearray(32 * 2**20)
    assert memory.peak_mib["me"] > 32
    del block


def test_load_plot_writes_a_png(tmp_path):
    steps = [
        {
            "rate": r,
            "submit_p50_s": 0.02,
            "submit_p99_s": 0.05,
            "completion_p50_s": 0.2,
            "completion_p95_s": p95,
            "completion_p99_s": p95,
        }
        for r, p95 in ((2, 0.3), (5, 0.8), (10, math.inf))
    ]
    path = plot({"steps": steps}, tmp_path / "load.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gallery_distractors_are_never_drawn_around_a_probe_image():
    from bench.gallery import distractor_seeds, split_real

    rng = np.random.default_rng(1)
    names = ["lfw_colour/Ann"] * 5 + ["lfw_view1/Bob"] * 2 + ["lfw_view1/Cy"]
    real = {
        "names": names,
        "images": [f"/faces/{n}_{i:04d}.jpg" for i, n in enumerate(names)],
        "vectors": rng.normal(0, 0.1, (len(names), 128)).astype(np.float32),
    }
    enrolled, probes = split_real(real)
    seeds = distractor_seeds(enrolled)
    assert len(probes) == 3 and len(seeds) == len(names) - 3
    for _, vector, _ in probes:
        assert not np.any(np.all(seeds == vector, axis=1))
