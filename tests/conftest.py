"""Fixtures shared by the test suite: processes, ports, catalogs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import CCTOOLS_CATALOG, Process, free_port, python_module, tcp_open, wait_until


@pytest.fixture(scope="session", autouse=True)
def test_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every process the tests start shares one secret of their own
    (``DHT_SECRET_FILE``), never the user's ~/.config/dht/secret."""
    from netkit.security import SECRET_ENV, load_secret

    path = tmp_path_factory.mktemp("secret") / "secret"
    load_secret(path)  # creates it, private
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(SECRET_ENV, None)
    else:
        os.environ[SECRET_ENV] = previous


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Starts processes that are stopped when the test ends, whatever happens."""
    started: list[Process] = []

    def start(
        args: list[str],
        env: dict[str, str] | None = None,
        name: str = "proc",
        cwd: Path | None = None,
    ) -> Process:
        process = Process(args, tmp_path / f"{name}-{len(started)}.log", env=env, cwd=cwd)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


class CatalogHandle:
    """A running catalog: ``host`` is what goes into CATALOG_HOST."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def catalog(spawn, tmp_path: Path) -> CatalogHandle:
    """Our catalog (python -m catalog) on free ports, with its own state directory."""
    port = free_port()
    process = spawn(
        python_module(
            "catalog",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "catalog-state"),
        ),
        name="catalog",
    )
    wait_until(lambda: tcp_open("127.0.0.1", port) or not process.alive(), what="catalog to listen")
    assert process.alive(), process.output()
    return CatalogHandle(process, port)


def cctools_missing() -> str | None:
    for program in ("catalog_server", "catalog_query", "catalog_update"):
        if shutil.which(program) is None:
            return (
                f"{program} not installed (apt-get install coop-computing-tools; make test does it)"
            )
    return None


@pytest.fixture
def cctools_catalog(tmp_path: Path) -> Iterator[CatalogHandle]:
    """A real cctools catalog_server on loopback, started by shared/tools/cctools-catalog."""
    reason = cctools_missing()
    if reason:
        pytest.skip(reason)
    port = free_port()
    pid = int(
        subprocess.run(
            [str(CCTOOLS_CATALOG), str(port)], check=True, capture_output=True, text=True
        ).stdout.split()[0]
    )
    try:
        yield CatalogHandle(None, port)  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI the compatibility tests must run (make test installs cctools): a skip there fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and "cctools" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"cctools programs are required in CI: {report.longrepr}"


__all__ = ["CatalogHandle", "wait_until"]
