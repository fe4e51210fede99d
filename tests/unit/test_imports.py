"""Every module of api/, shared/, worker/, the client package and the Celery configuration imports
alone, in a fresh interpreter, without service URLs: no import cycle, no settings or services read
at import."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "shared", "worker")
CLIENT_SRC = ROOT / "biofleet_client" / "src"


def modules() -> list[str]:
    names = ["celeryconfig"]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for path in sorted((CLIENT_SRC / "biofleet_client").rglob("*.py")):
        parts = path.relative_to(CLIENT_SRC).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def import_alone(name: str) -> str | None:
    """None when `import name` works in a fresh interpreter, else the error's last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOFLEET_")}
    env["BIOFLEET_STATE_DIR"] = str(ROOT / ".no-such-state")  # no embedded stack to find
    run = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    return None if run.returncode == 0 else f"{name}: {(run.stderr.strip().splitlines() or ['?'])[-1]}"


def test_each_module_imports_alone():
    names = modules()
    assert {"worker.app", "worker.tasks", "worker.batch.run", "shared.celery_app", "biofleet_client.aio"} <= set(names)
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [error for error in pool.map(import_alone, names) if error]
    assert failures == []
