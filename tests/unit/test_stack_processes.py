"""start_process / stop_process on real processes: detached groups, SIGTERM then SIGKILL."""

import os
import sys
import time

import pytest

from shared.stack import StackError, free_port, pid_alive, start_process, stop_process, wait_http

# A parent that ignores SIGTERM and leaves a child that ignores it too, then reports the child pid.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
print(child.pid, flush=True)
time.sleep(300)
"""


def _child_pid(log_path, timeout=20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text().strip() if log_path.exists() else ""
        if text:
            return int(text.splitlines()[0])
        time.sleep(0.05)
    raise AssertionError("the child pid never appeared")


def test_stop_process_kills_a_stubborn_group(tmp_path):
    log = tmp_path / "stubborn.log"
    proc = start_process([sys.executable, "-c", STUBBORN], dict(os.environ), log)
    child = _child_pid(log)
    assert os.getpgid(proc.pid) == proc.pid != os.getpgrp()  # its own group, not ours
    assert os.getpgid(child) == proc.pid
    stop_process(proc, timeout=0.5)
    assert proc.poll() is not None
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child)


def test_stop_process_by_pid_and_twice(tmp_path):
    proc = start_process([sys.executable, "-c", "import time; time.sleep(300)"], dict(os.environ), tmp_path / "l")
    stop_process(proc.pid, timeout=5)
    proc.wait(timeout=5)
    stop_process(proc, timeout=1)  # already stopped: no error
    assert not pid_alive(proc.pid)


def test_wait_http_fails_on_a_closed_port():
    with pytest.raises(StackError, match="did not answer"):
        wait_http(f"http://127.0.0.1:{free_port()}/healthz", timeout=0.5)
