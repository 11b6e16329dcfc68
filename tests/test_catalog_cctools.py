"""Compatibility both ways with the real cctools programs, on loopback only.

The cctools tools default to Notre Dame's catalog: every run here names a
loopback catalog explicitly (-c, -u or CATALOG_HOST).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from catalog.client import announce, query, resolve
from harness.processes import free_port, python_module, wait_until
from tests.conftest import cctools_missing
from tests.test_catalog_helpers import OurCatalog, get, ports, send_udp, wait_for_records

pytestmark = pytest.mark.cctools


@pytest.fixture(autouse=True)
def _needs_cctools():
    reason = cctools_missing()
    if reason:
        pytest.skip(reason)


def run(args: list[str], catalog_host: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "CATALOG_HOST": catalog_host, **env},
    )


def catalog_query(catalog_host: str, *args: str) -> list[dict]:
    result = run(["catalog_query", "-c", catalog_host, "-t", "10", *args], catalog_host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_catalog_update_registers_with_our_catalog(catalog, tmp_path, protocol):
    update = tmp_path / "update.json"
    update.write_text(json.dumps({"type": "hashtable", "port": 7001, "owner": "cc", "name": "x"}))
    result = run(
        ["catalog_update", "-c", catalog.host, "-f", str(update)],
        catalog.host,
        CATALOG_UPDATE_PROTOCOL=protocol,  # tcp: the update goes to our port P+1
    )
    assert result.returncode == 0, result.stderr
    found = wait_for_records(catalog, lambda rs: 7001 in ports(rs))
    record = found[0]
    assert (record["type"], record["owner"], record["name"]) == ("hashtable", "cc", "localhost")
    assert "opsys" in record  # catalog_update adds facts about the machine


@pytest.fixture
def chirp_dir():
    """A scratch directory chirp_server can use after dropping root for "nobody"
    (pytest's own temporary directories are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="chirp-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_chirp_server_registers_with_our_catalog(catalog, spawn, chirp_dir):
    root, transient = chirp_dir / "root", chirp_dir / "transient"
    root.mkdir()
    transient.mkdir()
    port = free_port()
    args = ["chirp_server", "-u", catalog.host, "-p", str(port), "-r", str(root)]
    args += ["-y", str(transient), "-I", "127.0.0.1", "--project-name", "compat"]
    if os.geteuid() == 0:  # chirp_server refuses to run as root without a user to switch to
        for path in (root, transient):
            shutil.chown(path, "nobody")
        args += ["-i", "nobody"]
    spawn(args, env={"CATALOG_HOST": catalog.host}, name="chirp", cwd=chirp_dir)
    found = wait_for_records(catalog, lambda rs: port in ports(rs, type="chirp"))
    record = next(r for r in found if r["port"] == port)
    assert record["project"] == "compat" and record["address"] == "127.0.0.1"
    assert "uuid" in record  # so its key is address:port:name:uuid
    assert get(catalog, f"/detail/127.0.0.1:{port}:localhost:{record['uuid']}").status_code == 200


def test_catalog_query_reads_our_catalog_with_and_without_filters(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state", "-v")  # -v: requests are logged
    send_udp(catalog.port, {"type": "hashtable", "port": 7101, "owner": "José"})
    send_udp(catalog.port, {"type": "hashtable", "port": 7102, "owner": "ann"})
    send_udp(catalog.port, {"type": "chirp", "port": 7103, "owner": "ann"})
    wait_for_records(catalog, lambda rs: len(rs) == 3)
    ours = catalog.process.output().count("GET /query.json")

    assert ports(catalog_query(catalog.host)) == {7101, 7102, 7103}
    where = 'type=="hashtable" && (port > 7101 || owner == "nobody")'
    assert ports(catalog_query(catalog.host, "-w", where)) == {7102}
    assert ports(catalog_query(catalog.host, "-w", 'not (type == "chirp")')) == {7101, 7102}
    # catalog_query sends non-ASCII text as "\uffffffc3..." byte escapes; the real
    # catalog refuses those and catalog_query falls back to /query.json. Ours reads them.
    assert ports(catalog_query(catalog.host, "-w", 'owner=="José"')) == {7101}
    requests_seen = catalog.process.output()
    assert requests_seen.count("GET /query/") == 4
    # Every filter was answered by us: catalog_query never fell back to /query.json.
    assert requests_seen.count("GET /query.json") == ours


def test_our_client_reads_a_real_catalog_server(cctools_catalog):
    catalogs = [("127.0.0.1", cctools_catalog.port)]
    announce({"type": "hashtable", "project": "cc-p", "owner": "me", "port": 7201}, catalogs)
    announce({"type": "hashtable", "project": "other", "owner": "me", "port": 7202}, catalogs)
    wait_until(lambda: {7201, 7202} <= ports(query(catalogs=catalogs)), what="records")
    record = resolve("hashtable", "cc-p", catalogs)
    assert record is not None and record["port"] == 7201 and record["address"] == "127.0.0.1"
    assert ports(query('project=="other"', catalogs)) == {7202}
    assert resolve("hashtable", "absent", catalogs) is None


def test_a_senders_own_address_is_not_believed_from_a_real_catalog(cctools_catalog):
    """cctools keeps a sender's address and lastheardfrom beside its own stamps, as
    duplicate keys: our client reads the catalog's (the first), not the sender's lie."""
    catalogs = [("127.0.0.1", cctools_catalog.port)]
    announce({"type": "hashtable", "project": "liar", "owner": "me", "port": 7203,
              "address": "6.6.6.6", "lastheardfrom": 4102444800}, catalogs)  # fmt: skip
    wait_until(lambda: 7203 in ports(query(catalogs=catalogs)), what="the record")
    record = resolve("hashtable", "liar", catalogs)
    assert record is not None and record["address"] == "127.0.0.1"
    assert record["lastheardfrom"] < 4102444800


EXPRESSIONS = [
    'type=="hashtable"',
    'type=="hashtable" && port > 7302',
    'type == "hashtable" || port == 7305',
    "port - 7300 - 2 == 3",  # grouped to the right, as in JX: port - (7300 - 2) == 3
    'port % 2 == 1 and owner != "bob"',
    'not (owner == "bob")',
    "load > 1.5",
    "load + 1 == 3.5",
    'owner + port == "bob7303"',
    "missing == 1",
    "port == 7301 or missing == 1",
    'tags[0] == "x"',
    "port / 2 == 3651",
    "-port < -7303",
    "up",
    "up == false",
    "load",
]


def test_our_filters_agree_with_the_real_catalog(catalog, cctools_catalog):
    """The same records in both catalogs, the same expressions: the same answers."""
    records = [
        {"type": "hashtable", "port": 7301, "owner": "ann", "load": 2.5, "up": True},
        {"type": "hashtable", "port": 7302, "owner": "bob", "load": 0.5, "tags": ["x"]},
        {"type": "hashtable", "port": 7303, "owner": "bob", "up": False},
        {"type": "chirp", "port": 7305, "owner": "cy", "load": 1.5, "tags": ["y", "x"]},
    ]
    ours, real = [("127.0.0.1", catalog.port)], [("127.0.0.1", cctools_catalog.port)]
    for record in records:
        announce(record, ours + real)
    for catalogs in (ours, real):
        wait_until(lambda c=catalogs: {7301, 7302, 7303, 7305} <= ports(query(catalogs=c)))
    for expression in EXPRESSIONS:
        expected = ports(query(expression, real)) - {cctools_catalog.port}
        assert ports(query(expression, ours)) == expected, expression


def test_python_catalog_query_tool_reads_a_real_catalog(cctools_catalog, tmp_path: Path):
    catalogs = [("127.0.0.1", cctools_catalog.port)]
    announce({"type": "hashtable", "project": "tool", "owner": "me", "port": 7401}, catalogs)
    wait_until(lambda: 7401 in ports(query(catalogs=catalogs)), what="record")
    result = subprocess.run(
        python_module("catalog.query", "-c", cctools_catalog.host, "--type", "hashtable"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "7401" in result.stdout and "tool" in result.stdout
