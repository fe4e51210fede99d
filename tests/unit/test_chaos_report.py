"""The chaos command's summary line and its schedule (cli/chaos_run.py)."""

from collections import Counter

from cli.chaos_run import ChaosReport, _steps


def test_the_line_has_the_promised_shape():
    report = ChaosReport(accepted=400, succeeded=351, failed=Counter({"no_face": 26, "bad_image": 23}),
                         callbacks_expected=395, callbacks_delivered=395)  # fmt: skip
    assert report.line() == (
        "accepted 400, succeeded 351, failed 49, lost 0, duplicated 0, callbacks expected 395, delivered 395, forged 0"
    )
    assert report.codes() == "bad_image 23, no_face 26"
    assert report.ok()
    assert ChaosReport(accepted=2, succeeded=2).codes() == "none"


def test_a_missing_or_forged_callback_fails_the_run():
    assert not ChaosReport(accepted=2, succeeded=2, callbacks_expected=2, callbacks_delivered=1).ok()
    assert not ChaosReport(accepted=2, succeeded=2, callbacks_expected=2, callbacks_delivered=2, forged=1).ok()
    assert not ChaosReport(accepted=2, lost=1).ok()


def test_slow_callbacks_are_spread_over_the_run_and_both_tenants():
    from cli.chaos_run import TENANTS, with_callbacks
    from shared.jobs import JobRequest

    class Urls:
        def fast_url(self, tenant):
            return f"http://127.0.0.1:1/hook/{tenant}"

        def slow_url(self, tenant):
            return f"http://127.0.0.1:2/hook/{tenant}"

    requests = [JobRequest(kind="verify", images=(b"x",), subject_id="s") for _ in range(100)]
    out, tenants, slow = with_callbacks(requests, Urls(), 10)
    assert len(slow) == 10 and min(slow) > 0 and max(slow) > 80
    assert {tenants[i] for i in slow} == set(TENANTS)
    assert all(out[i].callback_url.startswith("http://127.0.0.1:2/") for i in slow)
    assert all(r.callback_url.startswith("http://127.0.0.1:1/") for i, r in enumerate(out) if i not in slow)


def test_kills_are_spread_over_the_load():
    assert _steps(10, 35) == [10, 20, 30]
    assert _steps(10, 5) == []
