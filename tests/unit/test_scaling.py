"""Desired replica count, the CloudWatch publisher (in moto) and the scaling simulator."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import scaling_sim as sim
from shared.scaling import (
    BACKLOG_PER_WORKER,
    QUEUE_DEPTH,
    backlog_per_worker,
    count_asg_in_service,
    desired_replicas,
    publish_cloudwatch,
)

ROOT = Path(__file__).resolve().parents[2]

# --- desired_replicas --------------------------------------------------------------------------


def test_desired_is_backlog_over_target_rounded_up():
    depths = {"verify": 40, "enroll": 25, "identify": 0, "reenroll": 0}
    assert desired_replicas(depths, per_worker=32) == 3  # ceil(65 / 32)
    assert desired_replicas(depths, per_worker=65) == 1
    assert desired_replicas(depths, per_worker=64) == 2


def test_desired_is_clamped_to_min_and_max():
    assert desired_replicas({"verify": 10_000}, per_worker=10, max_replicas=20) == 20
    assert desired_replicas({"verify": 5}, per_worker=10, min_replicas=3) == 3


def test_activation_keeps_an_idle_fleet_at_its_floor():
    assert desired_replicas({"verify": 0}, per_worker=32) == 0
    assert desired_replicas({"verify": 4}, per_worker=32, activation=5) == 0
    assert desired_replicas({"verify": 6}, per_worker=32, activation=5) == 1  # active: at least one
    assert desired_replicas({"verify": 0}, per_worker=32, min_replicas=2) == 2


def test_desired_refuses_nonsense():
    with pytest.raises(ValueError):
        desired_replicas({"verify": 1}, per_worker=0)
    with pytest.raises(ValueError):
        desired_replicas({"verify": 1}, per_worker=1, min_replicas=5, max_replicas=2)


def test_backlog_per_worker_counts_no_workers_as_one():
    assert backlog_per_worker({"a": 30, "b": 10}, workers=4) == 10
    assert backlog_per_worker({"a": 30, "b": 10}, workers=0) == 40


# --- CloudWatch, in moto -----------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    moto = pytest.importorskip("moto")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        yield


def _latest(client, name: str, dimensions: list[dict]) -> float:
    now = datetime.now(UTC)
    points = client.get_metric_statistics(
        Namespace="biofleet",
        MetricName=name,
        Dimensions=dimensions,
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert len(points) == 1, points
    return points[0]["Maximum"]


def test_publisher_writes_depth_and_backlog_per_worker(aws):
    import boto3

    client = boto3.client("cloudwatch", region_name="us-east-1")
    depths = {"verify": 120, "enroll": 7, "identify": 0, "reenroll": 3000}
    publish_cloudwatch(client, depths, workers=4)

    names = {(m["MetricName"], tuple((d["Name"], d["Value"]) for d in m["Dimensions"]))
             for m in client.list_metrics(Namespace="biofleet")["Metrics"]}  # fmt: skip
    assert (BACKLOG_PER_WORKER, ()) in names
    for queue in depths:
        assert (QUEUE_DEPTH, (("Queue", queue),)) in names
    for queue, depth in depths.items():
        assert _latest(client, QUEUE_DEPTH, [{"Name": "Queue", "Value": queue}]) == depth
    assert _latest(client, BACKLOG_PER_WORKER, []) == pytest.approx(3127 / 4)


def test_asg_worker_count_reads_in_service_instances(aws):
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    autoscaling = boto3.client("autoscaling", region_name="us-east-1")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    autoscaling.create_launch_configuration(LaunchConfigurationName="lc", ImageId=image, InstanceType="g5.xlarge")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="workers", LaunchConfigurationName="lc", MinSize=3, MaxSize=5, DesiredCapacity=3,
        AvailabilityZones=["us-east-1a"],
    )  # fmt: skip
    assert count_asg_in_service(autoscaling, "workers") == 3
    with pytest.raises(LookupError):
        count_asg_in_service(autoscaling, "nope")


# --- simulator ---------------------------------------------------------------------------------


def _trace(tmp_path: Path, rate: float, seconds: int = 900) -> sim.Trace:
    path = tmp_path / f"flat-{rate:g}.csv"
    path.write_text(f"# flat\ntime_s,verify,reenroll\n0,{rate},0\n{seconds},{rate},0\n")
    return sim.read_trace(path)


POLICY = sim.Policy(per_worker=32, min_replicas=1, max_replicas=20, cooldown_s=120, startup_s=60)
WORKER = sim.WorkerModel(batch_size=16, embed_ms_per_face={1: 5.0, 16: 2.0}, other_ms_per_face=8.0)


def test_more_arrivals_need_more_workers(tmp_path):
    light = sim.simulate(_trace(tmp_path, 20), POLICY, WORKER)
    heavy = sim.simulate(_trace(tmp_path, 400), POLICY, WORKER)
    assert heavy.jobs > 10 * light.jobs
    assert heavy.served == heavy.jobs and light.served == light.jobs
    assert heavy.peak_workers > light.peak_workers
    assert heavy.worker_minutes > light.worker_minutes
    assert heavy.cost == pytest.approx(heavy.worker_minutes / 60 * sim.DEFAULT_PRICE_PER_HOUR)


def test_no_arrivals_keep_the_fleet_at_its_floor(tmp_path):
    for floor in (0, 2):
        result = sim.simulate(_trace(tmp_path, 0), sim.Policy(min_replicas=floor, startup_s=60), WORKER)
        assert result.jobs == 0
        assert result.peak_workers == floor
        assert set(result.series["workers"]) == {floor}


def test_slower_start_up_means_longer_waits(tmp_path):
    trace = _trace(tmp_path, 300)
    fast = sim.simulate(trace, POLICY, WORKER)
    slow = sim.simulate(trace, sim.Policy(**{**POLICY.__dict__, "startup_s": 300}), WORKER)
    assert slow.wait_p95_s > fast.wait_p95_s


def test_a_light_load_waits_about_one_flush_interval(tmp_path):
    result = sim.simulate(_trace(tmp_path, 2), POLICY, WORKER)
    assert 0 <= result.wait_p50_s <= WORKER.flush_interval_s + 1e-9
    assert result.peak_workers == 1


def test_worker_model_reads_service_times_from_bench_results(tmp_path):
    results = {"port_ms_per_face": {"1": 6.0, "32": 2.0}, "pipeline_ms_per_image_batch_32": 12.0}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(results))
    model = sim.WorkerModel.from_results(path, batch_size=32)
    assert model.other_ms_per_face == pytest.approx(10.0)
    assert model.batch_s(32) == pytest.approx(32 * 12.0 / 1000)
    assert model.batch_s(1) == pytest.approx(16.0 / 1000)
    assert sim.WorkerModel.from_results(tmp_path / "absent.json").source == "defaults"


def test_read_trace_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,verify\n10,1\n0,1\n")
    with pytest.raises(ValueError):
        sim.read_trace(bad)


def test_shipped_traces_parse():
    for name in ("diurnal", "burst"):
        trace = sim.read_trace(ROOT / "infra" / "traces" / f"{name}.csv")
        assert {"verify", "enroll", "identify", "reenroll"} == set(trace.queues)
        assert trace.expected_jobs() > 0


def test_simulate_command_prints_json_and_writes_the_plot(tmp_path):
    from cli.autoscale import autoscale

    trace = tmp_path / "t.csv"
    trace.write_text("time_s,verify\n0,50\n300,50\n")
    png = tmp_path / "out.png"
    result = CliRunner().invoke(
        autoscale, ["simulate", "--trace", str(trace), "--per-worker", "16", "--per-worker", "64",
                    "--startup", "30", "--plot", str(png), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["policy"]["per_worker"] for r in report["results"]] == [16, 64]
    assert report["results"][0]["served"] == report["jobs"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
