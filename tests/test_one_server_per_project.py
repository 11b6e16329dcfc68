"""One server per project (docs/protocol.md): a second server of a project with another
data directory is refused while the first answers; --takeover replaces it; records
that prove nothing (left by a dead server, forged, unsigned) block nothing; a catalog
that is down blocks nothing; a client warns of two servers once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from catalog.client import announce, catalog_addresses, owner_name, query
from harness.processes import free_port, python_module, python_script, run_program, tcp_open
from hashtable.client import HashTableClient
from hashtable.reporting import SIGNED_RECORD_FIELDS
from hashtable.rivals import listed_servers, other_servers, rivals
from netkit.security import Secret, load_secret
from tests.conftest import wait_until
from tests.server_support import Wire, start_server

FAST = {"timeout": 2, "backoff_initial": 0.05, "backoff_cap": 0.2, "give_up_after": 10}
QUICK = ("--announce-interval", "0.2")
REFUSED = "is already served by 127.0.0.1:{port} (data directory {data}"


def run_server(project: str, data: Path, catalog: str, *extra: str):
    """A server run to its end (a refused one ends at once)."""
    args = [project, "--host", "127.0.0.1", "--data-dir", str(data), "--catalog", catalog]
    return run_program(python_script("HashTableServer.py", *args, *extra), timeout=30)


def listed_ports(catalog: str, project: str) -> set[int]:
    records = query(catalogs=catalog_addresses(catalog), timeout=2)
    return {r["port"] for r in records if r.get("project") == project and "port" in r}


def wait_listed(catalog: str, project: str, port: int) -> None:
    wait_until(lambda: port in listed_ports(catalog, project), what=f"port {port} listed")


# ---------------------------------------------------------------- the records (sans-IO)

OURS = Secret(b"the project's secret, for these unit tests")


def record(port: int, origin: str, datadir: str | None = "/d", **fields) -> dict:
    """A record as a catalog lists it, signed as the servers sign theirs."""
    announced = {"type": "hashtable", "project": "p", "owner": "alice", "port": port}
    announced |= {"starttime": 1000.0 + port, "origin": origin, "datadir": datadir, **fields}
    signed = OURS.sign_record(announced, SIGNED_RECORD_FIELDS)
    return {**signed, "address": "127.0.0.1", "lastheardfrom": 2000 + port}


def test_only_signed_records_count_and_an_unsigned_datadir_is_unknown():
    older_server = OURS.sign_record({**record(1, "a"), "datadir": None})  # datadir unsigned
    older_server["datadir"] = "/d"
    records = [
        record(2, "b"),
        {**record(3, "c"), "port": 4},  # altered after signing
        {**record(5, "e"), "signature": "v1:" + "0" * 64},
        older_server,
        record(6, "f", project="q"),
    ]
    found = listed_servers(records, "p", OURS)
    assert [(s.port, s.datadir) for s in found] == [(2, "/d"), (1, None)]
    # Without a secret (--no-auth) the plain records are the ones to go by.
    plain = {k: v for k, v in record(7, "g").items() if k != "signature"} | {"auth": "none"}
    assert [s.port for s in listed_servers([*records, plain], "p", None)] == [7]


def test_a_record_of_this_very_data_directory_is_not_another_server():
    found = listed_servers(
        [record(1, "me"), record(2, "me", "/copy"), record(3, "you"), record(4, "x", owner="bob")],
        "p",
        OURS,
    )
    others = other_servers(found, owner="alice", origin="me", datadir="/d")
    assert [s.port for s in others] == [3, 2]  # freshest first; bob's is bob's business


def test_rivals_pair_the_freshest_with_each_other_table_once():
    found = listed_servers(
        [record(1, "old"), record(2, "old"), record(3, "new"), record(4, "x", owner="bob")],
        "p",
        OURS,
    )
    assert [(a.port, b.port) for a, b in rivals(found)] == [(3, 2)]
    assert rivals(listed_servers([record(1, "same"), record(2, "same")], "p", OURS)) == []


# ---------------------------------------------------------------- real servers


@pytest.mark.parametrize("auth", [(), ("--no-auth",)], ids=["tls", "no-auth"])
def test_a_second_server_with_another_data_directory_is_refused(spawn, tmp_path, catalog, auth):
    first = start_server(spawn, tmp_path / "a", *auth, project="twice", catalog=catalog.host)
    wait_listed(catalog.host, "twice", first.port)
    result = run_server("twice", tmp_path / "b", catalog.host, *auth)
    assert result.returncode == 2, result.stderr
    message = REFUSED.format(port=first.port, data=(tmp_path / "a").resolve())
    assert message in result.stderr and "--takeover" in result.stderr
    assert "Traceback" not in result.stderr and "listening on" not in result.stdout
    assert first.process.alive()
    # Its own data directory is not another server's: a restart there is a restart.
    first.process.stop()
    again = start_server(spawn, tmp_path / "a", *auth, project="twice", catalog=catalog.host)
    assert "already served" not in again.log()


def test_it_works_through_the_real_cctools_catalog(spawn, tmp_path, cctools_catalog):
    first = start_server(spawn, tmp_path / "a", project="cc", catalog=cctools_catalog.host)
    wait_listed(cctools_catalog.host, "cc", first.port)
    result = run_server("cc", tmp_path / "b", cctools_catalog.host)
    assert result.returncode == 2 and f"served by 127.0.0.1:{first.port}" in result.stderr


def test_takeover_replaces_the_running_server(spawn, tmp_path, catalog):
    old = start_server(spawn, tmp_path / "a", *QUICK, project="moved", catalog=catalog.host)
    with Wire(old.port) as wire:
        assert wire.call({"method": "insert", "key": "old", "value": 1})["status"] == "ok"
    wait_listed(catalog.host, "moved", old.port)
    new = start_server(spawn, tmp_path / "b", "--takeover", project="moved", catalog=catalog.host)
    assert f"--takeover: replacing the server of project moved at 127.0.0.1:{old.port}" in new.log()
    # The old one notices at its next announcement, says so, and stops.
    assert old.process.popen.wait(timeout=10) == 0
    assert f"has been taken over by 127.0.0.1:{new.port}" in old.log()
    assert str((tmp_path / "a").resolve()) in old.log()  # where its table stays
    wait_until(lambda: old.port not in listed_ports(catalog.host, "moved"), what="withdrawal")
    with HashTableClient("moved", catalog=catalog.host, **FAST) as table:
        table.insert("new", 2)
        with pytest.raises(KeyError):
            table.lookup("old")
    with Wire(new.port) as wire:
        assert wire.call({"method": "lookup", "key": "new"}) == {"status": "ok", "result": 2}


@pytest.mark.parametrize("directory", ["same", "other"])
def test_a_record_left_by_a_killed_server_does_not_block(spawn, tmp_path, catalog, directory):
    dead = start_server(spawn, tmp_path / "a", project="left", catalog=catalog.host)
    wait_listed(catalog.host, "left", dead.port)
    dead.process.kill()
    data = tmp_path / ("a" if directory == "same" else "b")
    started = time.monotonic()
    server = start_server(spawn, data, project="left", catalog=catalog.host)
    assert dead.port in listed_ports(catalog.host, "left")  # still listed, for minutes
    assert "already served" not in server.log()
    assert time.monotonic() - started < 10


def forged(kind: str, port: int, project: str) -> dict:
    record = {
        "type": "hashtable",
        "project": project,
        "owner": owner_name(),
        "port": port,
        "starttime": round(time.time(), 3),
        "origin": "f00d" * 4,
        "datadir": "/somewhere/else",
        "uuid": f"forged-{kind}",
    }
    if kind == "unsigned":
        return {**record, "auth": "tls-secret-v1"}
    if kind == "plain":
        return {**record, "auth": "none"}
    if kind == "other secret":
        return Secret(b"not the project's secret at all").sign_record(record, (*record, "auth"))
    return load_secret().sign_record(record, (*record, "auth"))  # "ours": the control


@pytest.mark.parametrize("kind", ["unsigned", "plain", "other secret", "ours"])
def test_only_records_our_secret_signed_can_block(spawn, tmp_path, catalog, kind):
    # A live server of the project that the catalog does not list: a forged record
    # points at it, so that nothing but the record's trust decides.
    unlisted = start_server(spawn, tmp_path / "a", project="forged")
    announce(forged(kind, unlisted.port, "forged"), catalog_addresses(catalog.host))
    wait_listed(catalog.host, "forged", unlisted.port)
    if kind == "ours":  # a record our secret signed is believed
        result = run_server("forged", tmp_path / "b", catalog.host)
        assert result.returncode == 2 and f"by 127.0.0.1:{unlisted.port}" in result.stderr
    else:
        server = start_server(spawn, tmp_path / "b", project="forged", catalog=catalog.host)
        assert "already served" not in server.log()


def test_a_catalog_that_is_down_does_not_keep_a_server_from_starting(spawn, tmp_path):
    server = start_server(spawn, tmp_path / "data", project="alone")  # no catalog there
    assert "cannot check that no other server serves project alone" in server.log()
    assert "starting anyway" in server.log()


def test_a_server_started_while_the_catalog_was_down_checks_when_it_is_back(spawn, tmp_path):
    port, state = free_port(), tmp_path / "catalog-state"
    catalog_args = ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]
    catalog = spawn(python_module("catalog", *catalog_args), name="catalog")
    wait_until(lambda: tcp_open("127.0.0.1", port), what="the catalog")
    host = f"127.0.0.1:{port}"
    first = start_server(spawn, tmp_path / "a", project="late", catalog=host)
    wait_listed(host, "late", first.port)
    assert catalog.stop() == 0  # a clean stop keeps its records
    second = start_server(spawn, tmp_path / "b", *QUICK, project="late", catalog=host)
    assert "starting anyway" in second.log()
    spawn(python_module("catalog", *catalog_args), name="catalog-again")
    assert second.process.popen.wait(timeout=15) == 2
    assert f"served by 127.0.0.1:{first.port}" in second.log()
    assert "found only now" in second.log()
    assert first.process.alive()


def test_the_client_warns_once_of_two_servers_and_uses_the_newest(spawn, tmp_path, catalog, caplog):
    old = start_server(spawn, tmp_path / "a", project="split", catalog=catalog.host)
    wait_listed(catalog.host, "split", old.port)
    new = start_server(spawn, tmp_path / "b", "--takeover", project="split", catalog=catalog.host)
    wait_listed(catalog.host, "split", new.port)  # the old one announces again in 60 s only
    caplog.set_level(logging.WARNING, logger="hashtable.client")
    for n in range(3):  # three look-ups, in two clients
        with HashTableClient("split", catalog=catalog.host, **FAST) as table:
            table.insert(f"k{n}", n)
            table.close()
            assert table.lookup(f"k{n}") == n
    warnings = [r.getMessage() for r in caplog.records if "lists two servers" in r.getMessage()]
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert f"127.0.0.1:{new.port}" in warning and f"127.0.0.1:{old.port}" in warning
    assert f"Using the newest, 127.0.0.1:{new.port}" in warning
    with Wire(new.port) as wire:
        assert wire.call({"method": "size"}) == {"status": "ok", "result": 3}
