"""Pairs parsing and verification metrics on constructed distances; the face commands on real images."""

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner

from cli.face import embed, eval_pairs
from worker.face.evaluation import (
    accuracy_at,
    best_threshold,
    cross_validated_accuracy,
    det_curve,
    equal_error_rate,
    fnmr_at_fmr,
    parse_pairs,
    plot_report,
    read_pairs,
    summary,
    threshold_at_fmr,
)

# --- pairs files ---------------------------------------------------------------------------


def test_parse_single_fold_header(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("2\nAlice\t1\t2\nBob 3 14\nAlice\t1\tBob\t2\nCarol 10 Dave 1\n")
    pairs = read_pairs(path)
    assert [(p.first, p.second, p.same, p.fold) for p in pairs] == [
        ("Alice/Alice_0001.jpg", "Alice/Alice_0002.jpg", True, 0),
        ("Bob/Bob_0003.jpg", "Bob/Bob_0014.jpg", True, 0),
        ("Alice/Alice_0001.jpg", "Bob/Bob_0002.jpg", False, 0),
        ("Carol/Carol_0010.jpg", "Dave/Dave_0001.jpg", False, 0),
    ]


def test_parse_folds_header(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("3\t1\nA 1 2\nA 1 B 1\nC 1 2\nC 2 D 1\nE 1 3\nE 1 F 4\n\n")
    pairs = read_pairs(path)
    assert [p.fold for p in pairs] == [0, 0, 1, 1, 2, 2]
    assert [p.same for p in pairs] == [True, False] * 3
    assert pairs[5].second == "F/F_0004.jpg"


@pytest.mark.parametrize(
    "text, where",
    [
        ("2\nA 1 2\nB 1 2\nA 1 B 1\n", "promises 4"),  # a line missing
        ("1\nA 1 B 2\nA 1 B 2\n", "line 2"),  # a different-person line where a same one belongs
        ("1\nA 1 2\nA 1 2\n", "line 3"),  # and the other way round
        ("1\nA one 2\nA 1 B 2\n", "line 2"),  # not a number
        ("x\n", "line 1"),
        ("", "empty"),
    ],
)
def test_parse_rejects_malformed_files(text, where):
    with pytest.raises(ValueError, match=where):
        parse_pairs(text)


# --- metrics -------------------------------------------------------------------------------


def test_accuracy_and_best_threshold():
    genuine, impostor = [0.1, 0.2, 0.3, 0.35], [0.25, 0.8, 0.9]
    assert accuracy_at(genuine, impostor, 0.6) == pytest.approx(6 / 7)
    assert accuracy_at(genuine, impostor, 0.22) == pytest.approx(5 / 7)
    threshold, accuracy = best_threshold(genuine, impostor)
    assert threshold == pytest.approx((0.35 + 0.8) / 2)
    assert accuracy == pytest.approx(6 / 7)


def test_eer_where_the_curves_cross_at_a_point():
    eer, threshold = equal_error_rate([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6, 0.7])
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.35)


def test_eer_interpolated_between_det_points():
    # At 0.2: FMR 1/4, FNMR 1/2; at 0.5: FMR 1/4, FNMR 0 -> they meet at 1/4, halfway.
    eer, threshold = equal_error_rate([0.1, 0.5], [0.2, 0.6, 0.7, 0.8])
    assert eer == pytest.approx(0.25)
    assert threshold == pytest.approx(0.35)


def test_eer_is_zero_when_separated():
    eer, threshold = equal_error_rate([0.1, 0.2], [0.7, 0.9])
    assert eer == 0.0
    assert 0.2 <= threshold < 0.7


def test_det_curve_runs_from_no_match_to_all_match():
    thresholds, fmr, fnmr = det_curve([0.1, 0.5], [0.3, 0.9])
    assert thresholds[0] == -np.inf
    assert (fmr[0], fnmr[0]) == (0.0, 1.0)
    assert (fmr[-1], fnmr[-1]) == (1.0, 0.0)
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(fnmr) <= 0)


def test_fnmr_at_fmr_known_answer():
    impostor = 1.0 + np.arange(100) / 100  # 1.00 .. 1.99
    genuine = [0.5] * 8 + [1.005, 1.5]
    # FMR 1e-2 allows one impostor (1.00) below the threshold 1.01: 1.005 matches, 1.5 does not.
    assert threshold_at_fmr(impostor, 1e-2) == pytest.approx(1.01)
    assert fnmr_at_fmr(genuine, impostor, 1e-2) == pytest.approx(0.1)
    assert fnmr_at_fmr(genuine, impostor, 0.5) == pytest.approx(0.1)  # threshold 1.50: 1.5 is not below it
    assert fnmr_at_fmr(genuine, impostor, 0.6) == pytest.approx(0.0)
    assert fnmr_at_fmr([2.5, 0.5], impostor, 1e-2) == pytest.approx(0.5)


def test_fnmr_at_fmr_is_none_with_too_few_impostors():
    genuine = [0.3] * 10
    assert fnmr_at_fmr(genuine, np.linspace(0.7, 1.0, 999), 1e-3) is None
    assert fnmr_at_fmr(genuine, np.linspace(0.7, 1.0, 1000), 1e-3) == 0.0
    assert fnmr_at_fmr(genuine, np.linspace(0.7, 1.0, 500), 1e-2) is not None


def test_cross_validation_picks_each_folds_threshold_on_the_others(tmp_path):
    # Fold 0 separates at 0.25, fold 1 at 1.25: each threshold fails the other fold half-way.
    path = tmp_path / "pairs.txt"
    path.write_text("2 2\nA 1 2\nA 1 3\nA 1 B 1\nA 2 B 1\nC 1 2\nC 1 3\nC 1 D 1\nC 2 D 1\n")
    pairs = read_pairs(path)
    distances = [0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 1.3, 1.4]
    same = [p.same for p in pairs]
    folds = [p.fold for p in pairs]

    crossed = cross_validated_accuracy(distances, same, folds)
    assert crossed.thresholds == pytest.approx([1.25, 0.25])
    assert crossed.fold_accuracies == pytest.approx([0.5, 0.5])
    assert crossed.accuracy == pytest.approx(0.5)

    pooled = cross_validated_accuracy(distances, same, [0] * 8)
    assert pooled.accuracy == pytest.approx(0.75)
    assert len(pooled.thresholds) == 1


def test_summary_and_plot(tmp_path):
    rng = np.random.default_rng(7)
    genuine, impostor = rng.normal(0.4, 0.05, 300), rng.normal(0.8, 0.05, 300)
    distances = np.concatenate([genuine, impostor])
    same = np.array([True] * 300 + [False] * 300)
    report = summary(distances, same, np.zeros(600, dtype=int))
    assert report["accuracy_at_0_6"] > 0.99
    assert report["fnmr_at_fmr_1e-3"] is None
    assert report["fnmr_at_fmr_1e-2"] is not None
    assert 0.0 <= report["eer"] < 0.01
    assert (report["genuine"], report["impostor"]) == (300, 300)

    png = plot_report({"a": (genuine, impostor)}, 0.6, tmp_path / "det.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the commands, on real images -----------------------------------------------------------


@pytest.fixture
def keep_root_logging():
    """The commands configure the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.faces
def test_embed_prints_descriptors_and_error_codes(faces_dir, tmp_path, keep_root_logging):
    image = faces_dir / "lfw_colour" / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a JPEG")
    runner = CliRunner()

    result = runner.invoke(embed, ["--json", str(image), str(broken)])
    assert result.exit_code == 1  # one file gave no descriptor
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(image), str(broken)]
    assert lines[0]["ok"] and len(lines[0]["descriptor"]) == 128
    assert 0.5 < np.linalg.norm(lines[0]["descriptor"]) < 2.0
    assert lines[1]["error_code"] == "bad_image" and lines[1]["descriptor"] is None

    text = runner.invoke(embed, [str(image), str(broken)]).stdout.splitlines()
    assert text[0].split()[:2] == [str(image), "ok"] and len(text[0].split()) == 2 + 128
    assert text[1].startswith(f"{broken} error bad_image:")


@pytest.mark.faces
def test_eval_pairs_json_with_dlib_reference(faces_dir, tmp_path, keep_root_logging):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "2\nAriel_Sharon 1 2\nColin_Powell 1 3\nAriel_Sharon 1 Colin_Powell 1\nArnold_Schwarzenegger 1 Colin_Powell 2\n"
    )
    plot = tmp_path / "det.png"
    result = CliRunner().invoke(
        eval_pairs,
        [str(pairs), "--root", str(faces_dir / "lfw_colour"), "--reference", "dlib", "--json", "--plot", str(plot)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    keys = {"pairs", "fta", "accuracy_at_0_6", "best_accuracy", "eer", "fnmr_at_fmr_1e-2", "fnmr_at_fmr_1e-3"}
    assert keys <= set(report) and keys <= set(report["reference"])
    assert report["detector"] in ("hog", "cnn") and report["reference"]["detector"] == "hog"
    for column in (report, report["reference"]):
        assert column["pairs"] == 4 and column["fta"] == 0
        assert column["accuracy_at_0_6"] == 1.0  # well-separated colour photos
        assert column["fnmr_at_fmr_1e-2"] is None  # two impostor pairs measure no such FMR
    assert plot.read_bytes()[:4] == b"\x89PNG"
