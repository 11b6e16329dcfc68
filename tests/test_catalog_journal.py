"""The catalog's journal: every accepted update survives a SIGKILL (docs/catalog.md,
"State and restarts"). Real processes for the crash and the damaged journal; the
journal's own bounds without sockets."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest

from catalog.journal import Journal, drop_journals, journal_files, journal_lines, replay
from catalog.records import RecordStore
from catalog.server import CatalogServer, Config
from harness.processes import free_port, tcp_open, wait_until
from tests.test_catalog_helpers import (
    OurCatalog,
    ports,
    records,
    send_tcp,
    send_udp,
    wait_for_records,
)


def journal_bytes(state: Path) -> int:
    """Bytes in the journal files now; one folded (removed) between the listing and
    its stat counts as empty."""
    total = 0
    for _, path in journal_files(state):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def saved(state: Path) -> list[dict]:
    path = state / "records.json"
    return orjson.loads(path.read_bytes()) if path.exists() else []


def by_port(found: list[dict]) -> dict:
    return {record["port"]: record for record in found}


# ---------------------------------------------------------------------------- processes


def test_every_update_the_catalog_accepted_survives_a_sigkill(spawn, tmp_path):
    state = tmp_path / "state"
    # A save only once an hour after the first: what follows it is in the journal only.
    first = OurCatalog(spawn, state, "--save-interval", "3600")
    send_udp(first.port, {"type": "early", "port": 1, "owner": "before"})
    wait_until(lambda: ports(saved(state)) == {1}, what="the first save")

    for port in range(2, 7):
        send_udp(first.port, {"type": "udp", "port": port, "owner": "tests", "lifetime": 600})
    send_udp(first.port, {"type": "early", "port": 1, "owner": "after"})  # replaces the saved one
    big = {"type": "tcp", "port": 7, "nested": {"list": [1, 2.5, "x"]}, "blob": "b" * 100_000}
    send_tcp(first.port + 1, big)
    before = wait_for_records(
        first,
        lambda rs: ports(rs) == set(range(1, 8)) and by_port(rs)[1]["owner"] == "after",
    )
    assert ports(saved(state)) == {1}  # not saved: only the journal holds them
    modes = {stat.S_IMODE(path.stat().st_mode) for _, path in journal_files(state)}
    assert modes == {0o600} and stat.S_IMODE(state.stat().st_mode) == 0o700
    first.process.kill()

    second = OurCatalog(spawn, state, port=first.port)
    after = records(second)
    assert by_port(after) == by_port(before)  # every field, lastheardfrom included
    assert by_port(after)[7]["blob"] == "b" * 100_000
    output = second.process.output()
    assert "replayed 7 records from 1 journal files" in output and "Traceback" not in output
    # The replayed journal is folded at once.
    wait_until(lambda: ports(saved(state)) == set(range(1, 8)), what="a save")
    wait_until(lambda: journal_bytes(state) == 0, what="the journal to be folded")


def test_a_torn_last_line_is_ignored_and_a_damaged_one_skipped_with_its_place(spawn, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    heard = int(time.time())

    def line(port: int) -> bytes:
        record = {"type": "j", "port": port, "address": "127.0.0.1", "name": "localhost"}
        return orjson.dumps({**record, "lastheardfrom": heard}) + b"\n"

    journal = state / "journal.3"
    written = line(1) + b'{"type": "j", "port": 2, "addr\n' + b"[1, 2]\n" + line(4) + line(5)[:30]
    journal.write_bytes(written)
    stray = state / "journal.9"  # not the catalog's at all
    stray.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    catalog = OurCatalog(spawn, state)
    assert ports(records(catalog)) == {1, 4}
    output = catalog.process.output()
    assert f"journal {journal} line 2 is damaged (not valid JSON" in output
    assert f"journal {journal} line 3 is damaged (not a record" in output
    assert f"journal {journal} line 5: ignored its torn last line (30 bytes" in output
    assert "replayed 2 records" in output and "Traceback" not in output
    # What it could not read is kept aside, never deleted by the fold; one line says so.
    assert (
        f"journal {journal} had lines that could not be read: kept it as {journal}.damaged"
        in output
    )
    assert f"kept it as {stray}.damaged" in output
    wait_until(lambda: ports(saved(state)) == {1, 4}, what="a save")
    assert (state / "journal.3.damaged").read_bytes() == written
    assert (state / "journal.9.damaged").read_bytes() == b"\x89PNG\r\n\x1a\n\x00\x00"
    assert not journal.exists() and not stray.exists()


def test_each_save_folds_the_journal(spawn, tmp_path):
    state = tmp_path / "state"
    catalog = OurCatalog(spawn, state, "--save-interval", "0.5")
    for port in range(1, 6):
        send_udp(catalog.port, {"type": "folded", "port": port})
        wait_for_records(catalog, lambda rs, p=port: p in ports(rs))
    wait_until(
        lambda: ports(saved(state)) == set(range(1, 6)) and journal_bytes(state) == 0,
        what="a save that folds the journal",
    )
    assert catalog.process.stop() == 0
    assert journal_files(state) == []  # a clean stop saves and folds everything


def test_a_journal_past_its_bound_forces_a_save(tmp_path):
    """In-process, with a small bound: the journal shrinks after each forced save, and
    the state file and the journal together hold every record all along."""
    state = tmp_path / "state"
    config = Config(port=free_port(), state_dir=state, save_interval=3600, journal_fold_bytes=4096)
    server = CatalogServer(config)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        wait_until(lambda: tcp_open("127.0.0.1", config.port), what="catalog to listen")
        sizes = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in range(1, 41):
                record = {"type": "bound", "port": port, "pad": "p" * 400}
                sock.sendto(orjson.dumps(record), ("127.0.0.1", config.port))
                wait_until(lambda p=port: f"127.0.0.1:{p}:localhost" in server.store.live)
                sizes.append(journal_bytes(state))

        def journaled() -> set[int]:
            return {
                orjson.loads(line)["port"]
                for _, path in journal_files(state)
                for line in path.read_bytes().splitlines()
            }

        wait_until(
            lambda: (
                ports(saved(state)) | journaled() == set(range(1, 41))
                and journal_bytes(state) < 4096 + 1024
            ),
            what="the journal folded",
        )
        assert max(sizes) < 40 * 400  # it never held everything: saves folded it
        assert any(b < a for a, b in itertools.pairwise(sizes))  # it shrank
        assert len(saved(state)) > 30
    finally:
        server.stop()
        thread.join(10)


# ---------------------------------------------------------------------------- the journal


def stamped(port: int, heard: float) -> bytes:
    record = {"type": "t", "port": port, "address": "10.0.0.1", "name": "h"}
    return orjson.dumps({**record, "lastheardfrom": int(heard)})


def test_replayed_records_expire_as_they_would_have(tmp_path):
    now = time.time()
    journal = Journal(tmp_path)
    journal.write([stamped(1, now), stamped(2, now - 2000)])  # 2 is past its 900 s
    journal.write([stamped(3, now - 100), stamped(1, now - 10)])  # 1 heard again, earlier
    journal.close()
    store = RecordStore(lifetime=900)
    counts = replay(store, [journal.path])
    assert counts["kept"] == 3 and counts["expired"] == 1
    assert {entry.key for entry in store.entries()} == {"10.0.0.1:1:h", "10.0.0.1:3:h"}
    assert store.get("10.0.0.1:1:h").expires == int(now - 10) + 900  # the last line wins


def test_a_new_journal_follows_the_old_ones_and_a_fold_drops_them(tmp_path):
    first = Journal(tmp_path)
    first.write([stamped(1, time.time())])
    assert first.rotate() == 1 and first.number == 2
    assert first.rotate() == 1  # nothing written since: the same file goes on
    first.close()
    second = Journal(tmp_path)
    assert second.number == 3 and second.earlier == [tmp_path / "journal.1", tmp_path / "journal.2"]
    assert second.unfolded == first.unfolded > 0
    drop_journals(tmp_path, 2)
    second.folded(2)
    assert [n for n, _ in journal_files(tmp_path)] == [3] and second.unfolded == 0
    second.close()


def test_the_journal_stops_when_full_and_starts_again_once_folded(tmp_path, caplog):
    journal = Journal(tmp_path, fold_bytes=100, max_bytes=300)
    line = stamped(1, time.time())
    journal.write([line, line])
    assert journal.wants_fold
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            journal.write([line])
    assert journal.unfolded <= 300 and journal.unjournaled > 0
    assert "new updates are not journaled" in caplog.text
    journal.folded(journal.rotate())
    journal.write([line])
    assert "is written again" in caplog.text and journal.unfolded == len(line) + 1
    journal.close()


def test_a_failed_write_leaves_no_half_line(tmp_path, caplog):
    journal = Journal(tmp_path)
    journal.write([stamped(1, time.time())])
    good = journal.path.read_bytes()
    os.close(journal._fd)
    journal._fd = os.open(os.devnull, os.O_RDONLY)  # every write fails
    journal.write([stamped(2, time.time())])
    assert "cannot write the journal" in caplog.text and journal.unjournaled == 1
    assert journal.path.read_bytes() == good
    journal.close()


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"a\nb\n", [(1, b"a", True), (2, b"b", True)]),
        (b"a\nbc", [(1, b"a", True), (2, b"bc", False)]),
        (b"a\n" + b"x" * 20 + b"\nb\n", [(1, b"a", True), (2, None, True), (3, b"b", True)]),
        (b"a\n" + b"x" * 20, [(1, b"a", True), (2, None, False)]),
        (b"", []),
    ],
)
def test_journal_lines_are_bounded_and_say_which_is_torn(data, lines):
    assert list(journal_lines(io.BytesIO(data), limit=10)) == lines
