"""Where a scenario runs: a work directory, logs, seeded randomness, and the
processes it started (always stopped at the end, whatever happens)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import Process
from harness.services import start_catalog, start_hashtable_server


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
    state_dir: Path

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

    def catalog(self, state: str = "catalog-state", port: int | None = None) -> Catalog:
        """Our catalog; pass ``port`` to start it again where it was."""
        state_dir = self.path(state)
        process, port = start_catalog(state_dir, self.logs, port)
        self._processes.append(process)
        return Catalog(process, port, state_dir)

    def server(self, project: str, data_dir: Path, catalog: str, *extra: str) -> Server:
        """A hash table server on a new port (port 0) with ``data_dir``; raises
        ``harness.services.StartFailed`` if it does not come up (recovery failed)."""
        log_path = self.logs / f"server-{project}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        process, port = start_hashtable_server(project, data_dir, catalog, self.logs, *extra)
        self._processes.append(process)
        return Server(process, port, offset)

    def close(self) -> None:
        for process in reversed(self._processes):
            process.stop(timeout=3)
        self._processes.clear()
