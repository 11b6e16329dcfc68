"""Real processes for tests, the demo and benchmarks: start them, wait until they serve, always stop them."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for TCP and UDP alike, with port+1 free too (a catalog uses both).

    Chosen at random BELOW the kernel's ephemeral range: a port the kernel handed
    out (bind to 0) can be taken by any outgoing connection before the server
    that was meant to have it binds it, and busy tests make thousands of those.
    ``kind`` is accepted for callers that name it; the port is checked for both.
    """
    low, high = _ephemeral_range()
    candidates = (20000, low - 2) if low > 21000 else (high + 1, 65000)
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*candidates)
        if all(_bindable(port + d) for d in (0, 1)):
            return port
    raise RuntimeError("no free port")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Polls ``condition`` until it returns something true; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def program_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every program started here gets: this one's, unbuffered
    output, the project importable (PYTHONPATH), and ``env`` on top."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return full_env


def run_program(
    args: list[str],
    *,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    text: bool = True,
    **options: Any,
) -> subprocess.CompletedProcess:
    """Runs a program to its end and returns what it did (its output captured):
    the way every short-lived program is started by the tests, the demo and the
    benchmarks. ``options`` go to ``subprocess.run`` (``preexec_fn``, say).
    Raises ``subprocess.TimeoutExpired`` past ``timeout``."""
    return subprocess.run(
        args,
        input=input,
        capture_output=True,
        text=text,
        env=program_environment(env),
        cwd=cwd or ROOT,
        timeout=timeout,
        **options,
    )


class Process:
    """A child process whose output goes to a file, stopped by ``stop()``."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        full_env = program_environment(env)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, the crash the durability promises are about."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 5.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def python_script(script: str, *args: str, tree: Path = ROOT) -> list[str]:
    """The command running ``script`` of the project at ``tree`` (this checkout by default)."""
    return [sys.executable, str(tree / script), *args]
