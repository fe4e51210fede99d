"""bench/gpu.sh, the GPU benchmark, run reduced on the CPU from a small bundle made here: every
stage ok and the JSON's shape; and what it keeps when stages fail or the budget is spent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["network", "cudnn_benchmark", "agreement", "detector", "pipeline"]


def run(args: list, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "OUT"}
    environ |= {"PYTHON": sys.executable, "OMP_WAIT_POLICY": "PASSIVE"} | env
    command = [str(ROOT / "bench" / "gpu.sh"), *map(str, args)]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def bundle(faces_dir, tmp_path_factory) -> Path:
    pytest.importorskip("dlib", reason="the bundle's reference descriptors need dlib (requirements/dev.txt)")
    from bench.gpu.bundle import build

    out = tmp_path_factory.mktemp("gpu") / "bundle"
    build(out, faces_dir, small=True)
    return out


@pytest.mark.faces
def test_quick_run_has_every_stage_ok(bundle, tmp_path):
    out = tmp_path / "gpu.json"
    done = run(
        [
            "--device",
            "cpu",
            "--quick",
            "--threads",
            "2",
            "--models-dir",
            bundle / "models",
            "--chips",
            bundle / "chips.npz",
            "--images",
            bundle / "faces",
            "--out",
            out,
        ]
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["finished"] and data["setup"]["device"] == "cpu" and data["setup"]["torch"]
    assert data["setup"]["bundle"]["chips"] == 20
    assert [s["name"] for s in data["stages"]] == STAGES
    for stage in data["stages"]:
        assert stage["status"] == "ok", stage
        assert {"name", "status", "elapsed_s", "error", "figures"} <= set(stage)
    figures = {s["name"]: s["figures"] for s in data["stages"]}
    assert figures["network"]["embed"]["fp32"]["8"]["faces_per_s"] > 0
    assert set(figures["network"]["model"]) == {"fp32", "bf16"}
    agreement = figures["agreement"]
    assert agreement["max_abs_vs_dlib"] <= 1e-4 and agreement["max_abs_vs_cpu_fp32"] <= 1e-5
    assert agreement["bf16_vs_cpu_fp32"]["all_finite"] and agreement["bf16_vs_cpu_fp32"]["pairs"] == 190
    assert figures["detector"]["batches"]["4"]["forward_passes"] == 1
    assert figures["detector"]["1080p"]["faces_found"] >= 1
    assert figures["pipeline"]["batches"]["16"]["ok"] == 16
    assert set(figures["pipeline"]["batches"]["16"]["stage_ms_per_image"]) == {
        "decode",
        "detect",
        "landmarks",
        "align",
        "embed",
    }
    assert figures["pipeline"]["phone_photos"]["ok"] == 1
    assert "network" in done.stdout and f"wrote {out}" in done.stdout


def test_failed_stages_keep_the_json_under_out(tmp_path):
    """No models: every stage fails on its own, and the JSON is still written, to $OUT."""
    done = run(
        [
            "--device",
            "cpu",
            "--quick",
            "--models-dir",
            tmp_path / "none",
            "--chips",
            tmp_path / "none.npz",
            "--images",
            tmp_path,
        ],
        OUT=str(tmp_path),
    )
    assert done.returncode == 1, done.stderr[-4000:]
    data = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert [s["name"] for s in data["stages"]] == STAGES and data["finished"]
    for stage in data["stages"]:
        assert stage["status"] == "failed" and stage["error"], stage


def test_spent_budget_skips_stages_and_says_why(tmp_path):
    out = tmp_path / "gpu.json"
    done = run(["--device", "cpu", "--budget-s", "0", "--out", out])
    assert done.returncode == 1
    data = json.loads(out.read_text())
    assert [s["status"] for s in data["stages"]] == ["skipped"] * len(STAGES)
    assert all("budget" in s["why"] for s in data["stages"])


def test_a_failed_part_keeps_the_other_figures():
    from bench.gpu.stages import failed_parts, part

    figures = {"batches": {}}
    part(figures["batches"], "1", lambda: {"ms_median": 1.0})
    part(figures["batches"], "2048", lambda: 1 / 0)
    assert figures["batches"]["1"] == {"ms_median": 1.0}
    assert (
        figures["batches"]["2048"]["status"] == "failed" and "ZeroDivisionError" in figures["batches"]["2048"]["error"]
    )
    assert failed_parts(figures) == ["batches.2048"]
