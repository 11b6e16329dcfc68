"""The real cctools ``catalog_server`` (Debian coop-computing-tools) on loopback.

For the compatibility tests and benchmarks. It listens on 127.0.0.1 only and sends
its own status updates to itself (``-u``): left to its defaults it would report to
Notre Dame's public catalogs. Its clients must be told where it is as well
(``-c 127.0.0.1:PORT`` or ``CATALOG_HOST``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

from harness.processes import Process, free_port, tcp_open, wait_until
from harness.procfs import group_alive
from harness.services import StartFailed, wait_ready

PROGRAMS = ("catalog_server", "catalog_query", "catalog_update")
INSTALL_HINT = "apt-get install coop-computing-tools; make setup does it"


def missing_programs(programs: tuple[str, ...] = PROGRAMS) -> str | None:
    """Why the cctools programs cannot run here, or None when they can."""
    for program in programs:
        if shutil.which(program) is None:
            return f"cctools: {program} not installed ({INSTALL_HINT})"
    return None


class CctoolsCatalog:
    """A running ``catalog_server``: ``host`` is what goes into CATALOG_HOST.

    Its scratch files (history, debug log) go to ``workdir``, a fresh temporary
    folder by default. ``restart()`` starts it again, empty, on the same port: the
    only way to make it forget a record before its lifetime ends (it purges expired
    records once a minute). Use it as a context manager, or call ``stop()``.
    """

    def __init__(
        self, workdir: Path | None = None, port: int | None = None, lifetime: int = 900
    ) -> None:
        reason = missing_programs(("catalog_server",))
        if reason:
            raise StartFailed(f"cannot start the cctools catalog: {reason}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cctools-catalog."))
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.lifetime = lifetime
        self._starts = 0
        self.process = self._start()

    def _start(self) -> Process:
        self._starts += 1
        history = self.workdir / f"history-{self._starts}"
        history.mkdir(parents=True, exist_ok=True)
        # -I: loopback only; -u: its own updates go to itself; -n: a fixed name;
        # -o :stdout: its log goes where Process keeps output, for error messages.
        command = [
            "catalog_server",
            "-I", "127.0.0.1",
            "-p", str(self.port),
            "-u", self.host,
            "-n", "localhost",
            "-l", str(self.lifetime),
            "-H", str(history),
            "-o", ":stdout",
        ]  # fmt: skip
        process = Process(
            command, self.workdir / f"catalog_server-{self.port}.log", cwd=self.workdir
        )
        wait_ready(process, lambda: tcp_open("127.0.0.1", self.port), "catalog_server", 10)
        return process

    @property
    def pid(self) -> int:
        return self.process.pid

    def _kill(self) -> None:
        """SIGKILL to its process group, with the query processes it forks (it keeps
        nothing worth a clean stop), then waits until it is gone."""
        group = self.process.pid  # its own session: Process starts one
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.stop()
        # The forked query processes hold the listening sockets until they are gone too.
        wait_until(
            lambda: not group_alive(group), timeout=10, what="catalog_server's processes to end"
        )

    def stop(self) -> None:
        self._kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        self._kill()
        self.process = self._start()

    def __enter__(self) -> CctoolsCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
