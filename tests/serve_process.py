"""A real `llava-agent serve` process on loopback for tests: a free port, the start, the wait until ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: Path, port: int, log: Path, *args: str) -> subprocess.Popen:
    """``llava-agent serve`` with ``config`` (and nothing from the caller's data folder), its output in ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLAVA_AGENT_CONFIG": str(config), "HF_HUB_OFFLINE": "1"}
    env.pop("LLAVA_AGENT_DATA_DIR", None)
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "agent.cli.main", "serve", "--port", str(port), *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def wait_until_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 240) -> None:
    """Poll ``/health`` until it answers 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the server did not become ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
