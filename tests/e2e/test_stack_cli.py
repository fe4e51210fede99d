"""`biofleet up`, `status`, `keys create`, `up` again, `down`: the embedded stack as a user runs it."""

import importlib.util
import json
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from shared.stack import free_port, pid_alive

pytestmark = pytest.mark.stack

BIOFLEET = [str(Path(sys.executable).parent / "biofleet")]
UP_TIMEOUT_S = 600
SERVICE_ENV = ("BIOFLEET_REDIS_URL", "BIOFLEET_DATABASE_URL", "BIOFLEET_BLOB_URL", "BIOFLEET_STATE_DIR")


def _missing_entry_points() -> list[str]:
    return [m for m in ("api", "worker") if importlib.util.find_spec(f"{m}.__main__") is None]


@pytest.fixture
def stack_env(tmp_path) -> dict:
    missing = _missing_entry_points()
    if missing:
        pytest.skip(f"`python -m {missing[0]}` does not exist yet")
    # Embedded services only: URLs set for other tests must not leak into this stack.
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env.update(
        BIOFLEET_STATE_DIR=str(tmp_path / "state"),
        BIOFLEET_API_PORT=str(free_port()),
        BIOFLEET_FLOWER_PORT=str(free_port()),
        BIOFLEET_WORKER_METRICS_PORT=str(free_port()),
        BIOFLEET_METRICS_PORT=str(free_port()),
        BIOFLEET_EXPORTER_PORT=str(free_port()),
    )
    return env


def biofleet(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([*BIOFLEET, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"biofleet {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def processes_using(folder: Path) -> list[int]:
    """Pids of live processes whose command line mentions folder (valkey --dir, postgres -D, ...)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(folder) in " ".join(proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except psutil.NoSuchProcess:
            continue
    return found


def test_up_status_keys_down(stack_env):
    state = Path(stack_env["BIOFLEET_STATE_DIR"])
    try:
        up = biofleet(stack_env, "up", timeout=UP_TIMEOUT_S)
        key_file = state / "api_key"
        key = key_file.read_text().strip()
        assert key in up.stdout
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

        stack = json.loads((state / "stack.json").read_text())
        pids = stack["pids"]
        assert set(pids) == {"valkey", "postgres", "api", "worker", "callbacks", "flower", "exporter"}
        assert stack["api_url"] == f"http://127.0.0.1:{stack_env['BIOFLEET_API_PORT']}"
        assert stack["redis_url"].startswith("redis://127.0.0.1:")
        depth = urllib.request.urlopen(stack["depth_url"], timeout=10).read().decode()
        assert 'biofleet_queue_depth{queue="verify"} 0.0' in depth
        # One API process per core: a family is served once a process has counted in it.
        listed = urllib.request.Request(f"{stack['api_url']}/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert urllib.request.urlopen(listed, timeout=10).status == 200
        metrics = urllib.request.urlopen(stack["api_metrics_url"], timeout=10).read().decode()
        assert 'biofleet_api_requests_total{code="200"}' in metrics

        status = json.loads(biofleet(stack_env, "status", "--json").stdout)
        assert all(entry["alive"] for entry in status["processes"].values()), status
        assert status["queues"] == {"verify": 0, "enroll": 0, "identify": 0, "reenroll": 0}

        biofleet(stack_env, "up", timeout=UP_TIMEOUT_S)  # idempotent: nothing new starts
        assert json.loads((state / "stack.json").read_text())["pids"] == pids
        assert key_file.read_text().strip() == key

        created = biofleet(stack_env, "keys", "create", "--tenant", "acme").stdout
        assert created.count("\n") == 1 and created.strip().startswith("bf_") and created.strip() != key
        secret = biofleet(stack_env, "webhooks", "secret", "--tenant", "acme").stdout.strip()
        rotated = biofleet(stack_env, "webhooks", "rotate-secret", "--tenant", "acme").stdout.strip()
        assert secret.startswith("whsec_") and rotated.startswith("whsec_") and rotated != secret
        assert biofleet(stack_env, "webhooks", "secret", "--tenant", "acme").stdout.strip() == rotated

        biofleet(stack_env, "down", timeout=300)
        assert not any(pid_alive(pid) for pid in pids.values())
        assert processes_using(state) == []
        assert json.loads((state / "stack.json").read_text())["pids"] == {}
        status = json.loads(biofleet(stack_env, "status", "--json").stdout)
        assert status["processes"] == {}
    finally:
        subprocess.run([*BIOFLEET, "down"], env=stack_env, capture_output=True, timeout=300)
