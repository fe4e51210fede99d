"""The structure docs/architecture.md describes: the import rules (import-linter contracts in
pyproject.toml) and the module size limit of the product packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "4 kept, 0 broken" in run.stdout


def test_no_product_module_is_over_the_size_limit():
    long = {
        str(path.relative_to(ROOT)): count
        for package in ("api", "worker", "shared", "biofleet_client/src/biofleet_client")
        for path in (ROOT / package).rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
