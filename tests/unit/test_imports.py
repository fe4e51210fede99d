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


def deferred_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every `from <project module> import name` inside a function of path:
    benchmarks import the stack lazily, so a renamed name only fails when the run gets there."""
    import ast

    tree = ast.parse(path.read_text())
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] in (*PACKAGES, "bench", "cli"):
                    found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_benchmarks_deferred_imports_resolve():
    import importlib

    missing = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        for line, module, name in deferred_imports(path):
            target = importlib.import_module(module)
            if not hasattr(target, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{path.name}:{line}: from {module} import {name}")
    assert missing == []
