"""Structured logs: one JSON object per line with the standard fields and the extras."""

import json
import logging

import pytest

from shared.logs import configure_logging


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_extras_and_exceptions(capsys):
    configure_logging("DEBUG", json=True)
    log = logging.getLogger("biofleet.test")
    log.info("batch done %d", 3, extra={"job_id": "j1", "batch_id": "b1"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed", extra={"job_id": "j2"})
    lines = capsys.readouterr().err.strip().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "batch done 3" and first["level"] == "INFO"
    assert first["logger"] == "biofleet.test" and first["job_id"] == "j1" and first["batch_id"] == "b1"
    assert "time" in first and "args" not in first
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc"]


def test_level_filters_and_plain_text(capsys):
    configure_logging("warning", json=False)
    log = logging.getLogger("biofleet.test")
    log.info("hidden")
    log.warning("shown", extra={"job_id": "j3"})
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "shown" in err and "job_id=j3" in err
