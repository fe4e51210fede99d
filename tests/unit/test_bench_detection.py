"""The detection benchmark's round timing."""

from bench.model import detection_rounds, print_tables


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
