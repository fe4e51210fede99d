"""pyproject.toml declares the dependencies; requirements/*.txt pin the same versions (base ->
dependencies, api, worker and dev -> the extras of those names). The client package
(biofleet_client/, its own pyproject.toml) comes into the dev install as `-e ./biofleet_client`."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pinned(name: str) -> set[str]:
    lines = (ROOT / "requirements" / f"{name}.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip() and not line.startswith("-")}


def test_requirements_pin_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(project["dependencies"]) == pinned("base")
    for name in ("api", "worker"):
        assert set(extras[name]) == pinned(name), name
    assert set(extras["dev"]) - {"biofleet[api,worker]"} == pinned("dev")
