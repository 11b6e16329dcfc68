"""Running N TestPerf clients at once, as separate processes started together.

The parent starts N worker processes (``TestPerf.py --worker``). Each connects,
warms up, then runs the stages in lock step with the others: before every stage
it says it is ready and waits for the parent's "go", so that the N clients run
the same stage at the same time and their throughputs may be summed. The
messages are JSON lines on the workers' standard output and input.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from perftest.stats import StageResult
from perftest.workload import Workload

ClientResults = list[StageResult]  # one per stage, in stage order
Progress = Callable[[str], None]


class WorkerFailed(RuntimeError):
    """A client process died or said something unexpected."""


def worker_main(client: Any, stages: Sequence[str], workload_options: dict[str, Any]) -> int:
    """The worker's side: announce readiness per stage, wait for go, report."""
    workload = Workload(client, **workload_options)
    workload.warm_up()
    for stage in stages:
        _emit({"event": "ready", "stage": stage})
        if sys.stdin.readline().strip() != "go":
            return 1  # the parent went away
        result = workload.run_stage(stage)
        _emit({"event": "done", "stage": stage, "result": result.to_json()})
    return 0


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(message) + b"\n")
    sys.stdout.buffer.flush()


def run_clients(
    worker_command: list[str],
    clients: int,
    stages: Sequence[str],
    progress: Progress = lambda text: None,
) -> list[ClientResults]:
    """Starts ``clients`` workers, drives them through ``stages``, returns their results."""
    workers: list[subprocess.Popen] = []
    try:
        for _ in range(clients):
            workers.append(_start(worker_command, len(workers) + 1, clients))
        results: list[ClientResults] = [[] for _ in workers]
        for stage in stages:
            progress(f"{clients} client(s): waiting for all to be ready for {stage}")
            for worker in workers:
                _expect(worker, "ready", stage)
            progress(f"{clients} client(s): {stage}")
            for worker in workers:
                _go(worker, stage)
            for worker, own in zip(workers, results, strict=True):
                own.append(StageResult.from_json(_expect(worker, "done", stage)["result"]))
        return results
    finally:
        for worker in workers:
            _close(worker)


def _start(command: list[str], number: int, clients: int) -> subprocess.Popen:
    try:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except OSError as exc:  # out of processes, memory or file descriptors
        raise WorkerFailed(
            f"cannot start client process {number} of {clients}: {exc.strerror or exc}"
        ) from None


def _go(worker: subprocess.Popen, stage: str) -> None:
    assert worker.stdin is not None
    try:
        worker.stdin.write(b"go\n")
        worker.stdin.flush()
    except BrokenPipeError:
        code = worker.wait()
        raise WorkerFailed(
            f"client process {worker.pid} exited with status {code} before {stage}"
        ) from None


def _expect(worker: subprocess.Popen, event: str, stage: str) -> dict[str, Any]:
    stdout: IO[bytes] = worker.stdout  # type: ignore[assignment]
    line = stdout.readline()
    if not line:
        code = worker.wait()
        raise WorkerFailed(f"client process {worker.pid} exited with status {code} before {stage}")
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise WorkerFailed(f"client process {worker.pid} said {line[:200]!r}") from exc
    if message.get("event") != event or message.get("stage") != stage:
        raise WorkerFailed(f"client process {worker.pid}: expected {event} {stage}, got {message}")
    return message


def _close(worker: subprocess.Popen) -> None:
    for stream in (worker.stdin, worker.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):  # a "go" still buffered for a dead worker
                stream.close()
    try:
        worker.wait(timeout=10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def testperf_path() -> Path:
    return Path(__file__).resolve().parent.parent / "TestPerf.py"
