"""`biofleet status --watch`: the view computed from two recorded metrics snapshots one second apart."""

from rich.console import Console

from cli.watch import parse, quantile, rates, render, stack_metric_urls

EXPORTER = """\
# TYPE biofleet_queue_depth gauge
biofleet_queue_depth{queue="verify"} 12.0
biofleet_queue_depth{queue="enroll"} 3.0
biofleet_queue_depth{queue="identify"} 0.0
biofleet_queue_depth{queue="reenroll"} 0.0
"""


def worker(finished: float, failed: float, fast: float, slow: float, busy: float, batches: float) -> str:
    return f"""\
# TYPE biofleet_jobs_finished_total counter
biofleet_jobs_finished_total{{kind="verify",status="succeeded",code="none"}} {finished}
biofleet_jobs_finished_total{{kind="verify",status="failed",code="no_face"}} {failed}
# TYPE biofleet_job_latency_seconds histogram
biofleet_job_latency_seconds_bucket{{kind="verify",le="0.5"}} {fast}
biofleet_job_latency_seconds_bucket{{kind="verify",le="1.0"}} {fast + slow}
biofleet_job_latency_seconds_bucket{{kind="verify",le="+Inf"}} {fast + slow}
biofleet_job_latency_seconds_count{{kind="verify"}} {fast + slow}
biofleet_job_latency_seconds_sum{{kind="verify"}} 1.0
# TYPE biofleet_worker_info gauge
biofleet_worker_info{{model_version="dlib-resnet-v1",device="cpu"}} 1.0
# TYPE biofleet_worker_busy_seconds counter
biofleet_worker_busy_seconds_total {busy}
# TYPE biofleet_batch_size histogram
biofleet_batch_size_bucket{{le="+Inf"}} {batches}
biofleet_batch_size_count {batches}
biofleet_batch_size_sum {batches * 16}
"""


API = """\
# TYPE biofleet_api_requests counter
biofleet_api_requests_total{code="202"} %s
biofleet_api_requests_total{code="401"} %s
"""

WORKER = "http://127.0.0.1:9102/metrics"
DOWN = "http://127.0.0.1:9120/metrics"


def snapshots():
    before = parse({"exp": EXPORTER, WORKER: worker(100, 4, 80, 20, 10.0, 5), "api": API % (50, 1), DOWN: None}, 1000.0)
    after = parse({"exp": EXPORTER, WORKER: worker(130, 6, 96, 36, 10.75, 7), "api": API % (82, 3), DOWN: None}, 1001.0)
    return before, after


def test_rates_over_one_second():
    view = rates(*snapshots())
    assert view.depth == {"verify": 12.0, "enroll": 3.0, "identify": 0.0, "reenroll": 0.0}
    assert view.jobs_per_s == {"failed": 2.0, "succeeded": 30.0}
    # 32 jobs in the interval: 16 under 0.5 s, 16 between 0.5 and 1 s.
    assert view.latency_s["p50"] == 0.5
    assert 0.9 < view.latency_s["p95"] <= 1.0
    assert view.workers == {WORKER: "dlib-resnet-v1 on cpu"}
    assert view.utilisation == 0.75
    assert view.batch_size == 16.0
    assert view.api_per_s == {"2xx": 32.0, "4xx": 2.0}
    assert view.down == [DOWN]


def test_render_shows_depth_throughput_latency_and_workers():
    console = Console(record=True, width=120)
    console.print(render(rates(*snapshots())))
    text = console.export_text()
    for needle in (
        "verify",
        "15",
        "jobs succeeded/s",
        "30.00",
        "end-to-end p95",
        "workers: 1",
        "75 %",
        "dlib-resnet-v1 on cpu",
        "API 4xx/s",
        "not answering: " + DOWN,
    ):
        assert needle in text, needle


def test_no_jobs_in_the_interval_shows_no_latency():
    before, _ = snapshots()
    view = rates(before, before)
    assert view.latency_s == {"p50": None, "p95": None, "p99": None}
    assert quantile(0.5, {}) is None


def test_stack_urls_cover_each_pool_process():
    stack = {
        "depth_url": "http://127.0.0.1:9110/metrics",
        "api_metrics_url": None,
        "callbacks_metrics_url": "http://127.0.0.1:9120/metrics",
        "metrics_url": "http://127.0.0.1:9102/metrics",
    }
    assert stack_metric_urls(stack, 2) == [
        "http://127.0.0.1:9110/metrics",
        "http://127.0.0.1:9120/metrics",
        "http://127.0.0.1:9102/metrics",
        "http://127.0.0.1:9103/metrics",
    ]
