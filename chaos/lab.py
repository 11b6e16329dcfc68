"""Where a scenario runs: a work directory, logs, seeded randomness, and the
processes it started (always stopped at the end, whatever happens)."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import Process
from harness.services import start_catalog, start_hashtable_server

STOP_TIMEOUT = 3.0  # seconds the processes get to stop on SIGINT before SIGKILL


@dataclass
class Result:
    """One scenario's line in the summary table, and what it found."""

    scenario: str
    runs: int = 0
    failures: int = 0
    lost: int | None = 0  # acknowledged writes (or queries) lost; None: not applicable
    problems: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        """Records a failed run and why (each failed run once)."""
        self.failures += 1
        self.problems.append(problem)


@dataclass
class Catalog:
    process: Process
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


class Server:
    """A hash table server process and where it listens; ``log_offset`` is where
    this run's lines start in the log file it shares with earlier runs."""

    def __init__(self, process: Process, port: int, log_offset: int) -> None:
        self.process = process
        self.port = port
        self.log_offset = log_offset

    def log(self) -> str:
        return self.process.output()[self.log_offset :]


class Lab:
    def __init__(self, root: Path, seed: int, quick: bool, say: Callable[[str], None]) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seed = seed
        self.rng = random.Random(seed)
        self.quick = quick
        self.say = say
        self._processes: list[Process] = []

    def path(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Process:
        process = Process(args, self.logs / f"{name}.log", env=env)
        self._processes.append(process)
        return process

    def catalog(
        self, state: str = "catalog-state", port: int | None = None, *options: str
    ) -> Catalog:
        """Our catalog (with ``options``); pass ``port`` to start it again where it was."""
        with _interrupts_deferred():
            process, port = start_catalog(self.path(state), self.logs, port, *options)
            self._processes.append(process)
        return Catalog(process, port)

    def server(self, project: str, data_dir: Path, catalog: str, *extra: str) -> Server:
        """A hash table server on a new port (port 0) with ``data_dir``; raises
        ``harness.services.StartFailed`` if it does not come up (recovery failed)."""
        log_path = self.logs / f"server-{project}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with _interrupts_deferred():
            process, port = start_hashtable_server(project, data_dir, catalog, self.logs, *extra)
            self._processes.append(process)
        return Server(process, port, offset)

    def close(self) -> None:
        """Stops every process it started; an interrupt meanwhile waits until they are."""
        with _interrupts_deferred():
            # All at once, with one deadline: a writer stopped after its server
            # would otherwise retry until its own time-out, one after the other.
            for process in self._processes:
                process.signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in self._processes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            for process in self._processes:
                process.stop(timeout=0)  # SIGKILL for what is left; closes the log
            self._processes.clear()


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Holds back Ctrl-C and SIGTERM until the block ends (a service started and
    registered, or every process stopped), then raises KeyboardInterrupt if one came."""
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = [signal.signal(sig, lambda signum, _: caught.append(signum)) for sig in held]
    try:
        yield
    finally:
        for sig, handler in zip(held, previous, strict=True):
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt
