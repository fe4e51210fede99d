"""The detection benchmark's round timing and bench/gpu.sh's detector section."""

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.model import detection_rounds, print_tables

ROOT = Path(__file__).resolve().parents[2]


def test_detection_rounds_runs_each_case_once_per_round_after_a_warm_up():
    calls = {"a": 0, "b": 0}
    order = []

    def case(name):
        def run():
            calls[name] += 1
            order.append(name)

        return run

    result = detection_rounds({"a": (case("a"), 4), "b": (case("b"), 1)}, rounds=3)
    assert calls == {"a": 4, "b": 4}
    assert order == ["a", "b"] * 4  # alternating rounds
    assert set(result) == {"a", "b"} and all(ms >= 0 for ms in result.values())


def test_print_tables_shows_the_detection_table(capsys):
    results = {
        "machine": {"device": "cpu", "processor": "x", "cpu_count": 2, "torch": "t", "torch_threads": 2},
        "date": "d",
        "dlib_ms_per_face": 100.0,
        "port_ms_per_face": {"32": 10.0},
        "ratio_dlib_over_port": {"32": 10.0},
        "stages_ms_per_face": {"biofleet": {"detect": 1.0}, "dlib": {"detect": 2.0}},
        "pipeline_ms_per_image_batch_32": 50.0,
        "pipeline_cnn_ms_per_image_batch_32": 40.0,
        "max_abs_descriptor_difference": 1e-7,
        "detection_ms_per_image": {"dlib_cnn_upsample0": 250.0, "port_upsample0_batch8": 12.5},
        "detection_setup": {"port_device": "cpu"},
    }
    print_tables(results)
    out = capsys.readouterr().out
    assert "face detection" in out and "dlib cnn upsample0" in out
    assert "port (cpu) upsample0 batch8" in out and "80" in out  # 1000 / 12.5 images/s


def test_gpu_script_measures_the_detector_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "BIOFLEET_FACES_DIR": str(tmp_path / "none"), "PYTHON": sys.executable}
    args = ["--device", "cpu", "--batches", "1", "--precisions", "fp32", "--repeats", "1",
            "--detector-batches", "1,2", "--out", str(out)]
    done = subprocess.run([str(ROOT / "bench" / "gpu.sh"), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert set(results["detector_throughput"]) == {"1", "2"}
    for figures in results["detector_throughput"].values():
        assert figures["images_per_s"] > 0 and figures["faces_per_image"] >= 0
    assert results["detector_inputs"].startswith("synthetic")
    assert "ported CNN face detector" in done.stdout
