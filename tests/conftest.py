"""Fixtures shared by the test suite: processes, ports, catalogs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.cctools import CctoolsCatalog, missing_programs
from harness.processes import Process, free_port, python_module, tcp_open, wait_until


@pytest.fixture(scope="session", autouse=True)
def test_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every process the tests start shares one secret of their own
    (``DHT_SECRET_FILE``), never the user's ~/.config/dht/secret."""
    from netkit.security import SECRET_ENV, load_secret

    path = tmp_path_factory.mktemp("secret") / "secret"
    load_secret(path, create=True)  # private
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
    """Why the cctools compatibility tests cannot run here, or None."""
    return missing_programs()


@pytest.fixture
def cctools_catalog(tmp_path: Path) -> Iterator[CctoolsCatalog]:
    """A real cctools catalog_server on loopback (harness.cctools), on a free port."""
    reason = cctools_missing()
    if reason:
        pytest.skip(reason)
    with CctoolsCatalog(tmp_path / "cctools-catalog") as cctools:
        yield cctools


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI the compatibility tests must run (make test installs cctools): a skip there fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and "cctools" in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"cctools programs are required in CI: {report.longrepr}"


__all__ = ["CatalogHandle", "wait_until"]
