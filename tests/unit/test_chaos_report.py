"""The chaos command's summary line and its schedule (cli/chaos_run.py)."""

from collections import Counter

from cli.chaos_run import ChaosReport, _steps


def test_the_line_has_the_promised_shape():
    report = ChaosReport(
        accepted=400,
        succeeded=351,
        failed=Counter({"no_face": 26, "bad_image": 23}),
        callbacks_expected=395,
        callbacks_delivered=395,
    )
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


def test_idle_phases_pause_then_trickle_then_resume():
    from cli.chaos_run import IDLE_S, SLOW_JOBS, submission_times

    times, pause_at = submission_times(90, 10.0, idle_phases=False)
    assert pause_at is None and times[:3] == [0.0, 0.1, 0.2] and len(times) == 90
    times, pause_at = submission_times(90, 10.0, idle_phases=True)
    assert len(times) == 90 and times == sorted(times)
    assert pause_at == 3.0 and times[29] < pause_at and times[30] == pause_at + IDLE_S
    slow = times[30 : 30 + SLOW_JOBS]
    assert [b - a for a, b in zip(slow, slow[1:])] == [1.0] * (SLOW_JOBS - 1)
    assert times[-1] - times[30 + SLOW_JOBS] < 4.0  # the rest at the full rate again


def test_heavy_jobs_replace_jobs_after_the_first_third(tmp_path, monkeypatch):
    from cli import chaos_run
    from shared.jobs import JobRequest

    requests = [JobRequest(kind="verify", images=(b"x",), subject_id="s") for _ in range(30)]
    monkeypatch.setattr(chaos_run, "heavy_images", lambda faces_dir: [b"heavy"] * chaos_run.HEAVY_IMAGES)
    mixed = chaos_run.with_heavy_jobs(requests, 3, tmp_path)
    heavy = [i for i, r in enumerate(mixed) if r.kind == "enroll"]
    assert heavy == [10, 16, 23] and len(mixed) == 30
    assert all(len(mixed[i].images) == 10 for i in heavy)
    assert len({mixed[i].subject_id for i in heavy}) == 3


def test_heavy_images_are_5000_pixels_square_and_the_same_each_run(tmp_path):
    import io

    from PIL import Image

    from cli.chaos_run import heavy_images

    first = heavy_images(tmp_path, count=2)  # no faces there: grey squares
    assert first == heavy_images(tmp_path, count=2) and first[0] != first[1]
    assert Image.open(io.BytesIO(first[0])).size == (5000, 5000)
