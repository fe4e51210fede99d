"""The chaos command's summary line and its schedule (cli/chaos_run.py)."""

from collections import Counter

from cli.chaos_run import ChaosReport, _steps


def test_the_line_has_the_promised_shape():
    report = ChaosReport(accepted=400, succeeded=351, failed=Counter({"no_face": 26, "bad_image": 23}))
    assert report.line() == "accepted 400, succeeded 351, failed 49 (bad_image 23, no_face 26), lost 0, duplicated 0"
    assert ChaosReport(accepted=2, succeeded=2).line() == "accepted 2, succeeded 2, failed 0 (none), lost 0, duplicated 0"


def test_kills_are_spread_over_the_load():
    assert _steps(10, 35) == [10, 20, 30]
    assert _steps(10, 5) == []
