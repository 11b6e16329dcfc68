"""Writer processes as a group, and the checks of what they wrote.

The crash and catalog scenarios start writers (chaos/writer.py), wait until
each has had writes acknowledged, judge tables against their ledgers
(chaos/ledger.py), and stop them: here once for both.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from chaos.lab import Lab, Result
from chaos.ledger import Ledger, Verdict, check
from harness.processes import Process, python_module, wait_until
from hashtable.client import HashTableClient

# Readiness bound: generous, for a 2-core machine shared with other work.
PROGRESS_TIMEOUT = 60.0


class Writers:
    """Writer processes of one project, each with its ledger in the lab."""

    def __init__(
        self,
        lab: Lab,
        project: str,
        catalog: str,
        keys: int = 50,
        cluster: tuple[int, int] | None = None,
    ) -> None:
        self.lab = lab
        self.project = project
        self.catalog = catalog
        self.keys = keys
        self.cluster = cluster  # (N, K): writers of a cluster named ``project``
        self.processes: list[Process] = []
        self.paths: list[Path] = []
        self._ledgers: list[Ledger] = []
        self._read: list[int] = []  # bytes of each ledger file read so far
        # A loss or a wrong answer stays in the table and the ledgers: report each once.
        self._lost: set[str] = set()
        self._wrong_seen = 0

    def start(self, count: int) -> None:
        for _ in range(count):
            name = f"w{len(self.processes)}"
            path = self.lab.root / f"ledger-{name}.jsonl"
            self.paths.append(path)
            self._ledgers.append(Ledger(path.stem))
            self._read.append(0)
            self.processes.append(
                self.lab.start(
                    python_module(
                        "chaos.writer", self.project, "--ledger", str(path), "--name", name,
                        "--keys", str(self.keys), "--seed", str(self.lab.seed),
                        "--catalog", self.catalog,
                        *(("--cluster", *map(str, self.cluster)) if self.cluster else ()),
                    ),
                    name=f"writer-{name}",
                )
            )  # fmt: skip

    def ledgers(self) -> list[Ledger]:
        """The ledgers as written so far (each file is read from where it was left)."""
        for n, path in enumerate(self.paths):
            if path.exists():
                with open(path, "rb") as file:
                    file.seek(self._read[n])
                    self._read[n] += self._ledgers[n].feed(file.read())
        return self._ledgers

    def wait_for_progress(self, timeout: float = PROGRESS_TIMEOUT) -> None:
        """Until every writer has had a new mutation acknowledged."""
        before = [ledger.acked for ledger in self.ledgers()]  # before it changes in place

        def progressed() -> bool:
            for process in self.processes:
                if not process.alive():
                    raise RuntimeError(f"{process.log_path.stem} died: {process.output()[-500:]}")
            return all(now.acked > then for now, then in zip(self.ledgers(), before, strict=True))

        wait_until(progressed, timeout=timeout, what="every writer to make progress")

    def stop(self, result: Result) -> None:
        """Stops them; each finishes its operation, so the server must be up."""
        for process in self.processes:
            process.signal(signal.SIGTERM)
        for process in self.processes:
            code = process.popen.wait(timeout=PROGRESS_TIMEOUT)
            if code != 0 or "Traceback" in process.output():
                result.fail(
                    f"{process.log_path.stem} exited with {code}: {process.output()[-300:]}"
                )

    def judge(self, state: dict[str, Any], result: Result, when: str) -> Verdict:
        """Checks a table's ``state`` against the ledgers as written so far: a lost
        write, a stray key or a writer's wrong answer fails the run."""
        ledgers = self.ledgers()
        verdict = check(state, ledgers)
        wrong = [f"{ledger.name} {line}" for ledger in ledgers for line in ledger.wrong]
        wrong, self._wrong_seen = wrong[self._wrong_seen :], len(wrong)
        lost = [line for line in verdict.lost if line not in self._lost]
        self._lost.update(lost)
        result.lost = (result.lost or 0) + len(lost)
        if not verdict.ok or wrong:
            shown = (verdict.lost + [f"stray key {k}" for k in verdict.strays] + wrong)[:5]
            result.fail(f"{when}: " + "; ".join(shown))
        return verdict

    def check_served(self, port: int, result: Result, when: str) -> Verdict:
        """Judges what the server on ``port`` serves, once the writers have stopped:
        nothing may be in flight any more."""
        with HashTableClient.at("127.0.0.1", port, give_up_after=30) as client:
            served = dict(client.scan(""))
        verdict = self.judge(served, result, when)
        if verdict.in_flight:
            result.fail(f"{when}: {verdict.in_flight} writes in flight after the writers stopped")
        return verdict

    def retries(self) -> int:
        """How many times their clients said they would retry."""
        return sum(process.output().count("retrying in") for process in self.processes)
