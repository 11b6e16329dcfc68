"""harness.cctools: the project's own loopback launcher for the real cctools catalog_server."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.client import announce, query
from harness.cctools import CctoolsCatalog, missing_programs
from harness.processes import tcp_open, wait_until
from harness.services import StartFailed
from tests.conftest import cctools_missing


def types_and_ports(catalog: CctoolsCatalog) -> set[tuple[str, int]]:
    return {(r.get("type"), r.get("port")) for r in query(catalogs=[("127.0.0.1", catalog.port)])}


@pytest.mark.cctools
def test_it_reports_to_itself_and_restarts_empty_on_the_same_port(tmp_path: Path):
    reason = cctools_missing()
    if reason:
        pytest.skip(reason)
    with CctoolsCatalog(tmp_path) as catalog:
        # Its own status update reached itself: -u points here, not at Notre Dame.
        wait_until(
            lambda: ("catalog", catalog.port) in types_and_ports(catalog),
            what="the catalog's record of itself",
        )
        announce({"type": "launcher-test", "port": 4242}, [("127.0.0.1", catalog.port)])
        wait_until(lambda: ("launcher-test", 4242) in types_and_ports(catalog), what="the record")
        first = catalog.pid
        catalog.restart()
        assert catalog.pid != first
        assert ("launcher-test", 4242) not in types_and_ports(catalog)
    assert not tcp_open("127.0.0.1", catalog.port)
    assert not catalog.process.alive()


def test_without_cctools_it_says_what_to_install(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to find here
    assert "catalog_server not installed (apt-get install coop-computing-tools" in (
        missing_programs() or ""
    )
    with pytest.raises(StartFailed, match="coop-computing-tools"):
        CctoolsCatalog(tmp_path)
