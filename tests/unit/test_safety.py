"""Default secrets next to real services: `biofleet up` refuses to start Flower with its default password."""

from pathlib import Path

import click
import pytest

from shared.safety import UnsafeSettings, embedded, refuse_default_secrets
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REMOTE_REDIS = "redis://redis.internal.example:6379/0"
REMOTE_POSTGRES = "postgresql://biofleet:pw@db.internal.example:5432/biofleet"


@pytest.mark.parametrize(
    "url, expected",
    [
        (None, True),
        ("redis://127.0.0.1:6379/0", True),
        ("redis://localhost:6379/0", True),
        ("redis://[::1]:6379/0", True),
        ("unix:///tmp/valkey.sock", True),
        ("postgresql+psycopg://postgres:@/postgres?host=/tmp/pg", True),
        (REMOTE_REDIS, False),
        (REMOTE_POSTGRES, False),
        ("postgresql://u@10.0.0.5/db", False),
    ],
)
def test_embedded_urls(url, expected):
    assert embedded(url) is expected


def test_default_secrets_are_refused_with_real_services_only():
    names = ("flower_password",)
    refuse_default_secrets(Settings(redis_url="redis://127.0.0.1:1/0"), "x", names)  # embedded: fine
    with pytest.raises(UnsafeSettings, match="BIOFLEET_FLOWER_PASSWORD"):
        refuse_default_secrets(Settings(redis_url=REMOTE_REDIS), "x", names)
    with pytest.raises(UnsafeSettings, match="BIOFLEET_FLOWER_PASSWORD"):
        refuse_default_secrets(Settings(database_url=REMOTE_POSTGRES), "x", names)
    refuse_default_secrets(Settings(database_url=REMOTE_POSTGRES, flower_password="s3cret-1"), "x", names)
    refuse_default_secrets(Settings(redis_url=REMOTE_REDIS), "x", ("no_such_setting",))  # skipped


def test_biofleet_up_refuses_before_starting_anything(tmp_path):
    from cli.stack import stack_up

    settings = Settings(redis_url=REMOTE_REDIS, state_dir=tmp_path / "state")
    with pytest.raises(click.ClickException, match="BIOFLEET_FLOWER_PASSWORD"):
        stack_up(settings, say=lambda line: None)
    assert not (tmp_path / "state").exists()


def test_every_engine_hides_statement_parameters():
    sources = [p for folder in ("shared", "api", "worker", "cli") for p in (ROOT / folder).rglob("*.py")]
    calls = [
        (p, line)
        for p in sources
        for line in p.read_text().splitlines()
        if "create_engine(" in line and "import" not in line
    ]
    assert calls
    for path, line in calls:
        assert "hide_parameters=True" in line, f"{path.relative_to(ROOT)}: {line.strip()}"
