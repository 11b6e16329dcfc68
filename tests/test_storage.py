"""Durability with real files: recovery, torn tails, corruption, compaction and its failures."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from harness.processes import ROOT, wait_until
from hashtable import logfile, storage
from hashtable.database import Database
from hashtable.logreader import read_records
from hashtable.request import Request, Status
from hashtable.sealing import seal, unseal
from hashtable.storage import DataDirBusy, RecoveryError


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def insert_many(db: Database, count: int, prefix: str = "k", size: int = 10) -> None:
    for i in range(count):
        db.execute(Request("insert", key=f"{prefix}{i}", value={"i": i, "pad": "x" * size}))
    db.commit()


def recovered(data: Path, **options) -> dict:
    with Database(data, **options) as db:
        return dict(db.table.data)


def log_records(data: Path, name: str = "table.txn") -> list[dict]:
    """The mutation records of a log (its header, control lines and zeros left out)."""
    return read_records(data / name)


def sealed(record: object) -> bytes:
    return seal(orjson.dumps(record))


def unsealed(line: bytes) -> object:
    text = unseal(line)
    assert text is not None, f"not a sealed line: {line!r}"
    return orjson.loads(text)


def compact(db: Database) -> None:
    db.maintain()
    assert db.stats()["compacting"], "a compaction should have started"
    wait_until(lambda: db.maintain() or not db.stats()["compacting"], what="compaction to end")


def children() -> set[int]:
    me = os.getpid()
    return {int(pid) for pid in Path(f"/proc/{me}/task/{me}/children").read_text().split()}


def start_compaction(db: Database) -> set[int]:
    """Starts a compaction; returns the new child's pid (other children are not ours)."""
    before = children()
    db.maintain()
    assert db.stats()["compacting"]
    return children() - before


# ---- the log ----------------------------------------------------------------------


def test_commit_makes_writes_durable_and_records_carry_origin_and_lsn(data):
    with Database(data) as db:
        db.execute(Request("insert", key="a", value=1))
        db.execute(Request("insert", key="b", value=[2]))
        assert db.needs_commit and log_records(data) == []
        db.commit()
        assert not db.needs_commit
        db.execute(Request("remove", key="a"))
        db.execute(Request("remove", key="missing"))  # a failed mutation is logged too
        db.commit()
        origin = db.origin
    records = log_records(data)
    assert [(r["origin"], r["lsn"], r["method"]) for r in records] == [
        (origin, 1, "insert"),
        (origin, 2, "insert"),
        (origin, 3, "remove"),
        (origin, 4, "remove"),
    ]
    assert recovered(data) == {"b": [2]}
    with Database(data) as db:
        assert db.origin == origin and db.stats()["lsn"] == 4


def test_reads_are_not_logged(data):
    with Database(data) as db:
        insert_many(db, 3)
        for method in ("lookup", "scan", "size", "query"):
            db.execute(Request(method, key="k1", regex="k", subkey="i", subvalue=1))
        assert not db.needs_commit


@pytest.mark.parametrize(
    "tail",
    [
        b'{"origin":"x","lsn":',  # cut mid-record
        None,  # a whole record without its seal: its write did not finish
        sealed({"lsn": 6})[:-5],  # torn inside the seal
    ],
)
def test_a_torn_write_before_the_zeros_is_dropped_and_writing_goes_on(data, tmp_path, tail, caplog):
    with Database(data) as db:
        insert_many(db, 5)
        end, origin = db.stats()["log_bytes"], db.origin
        image = crash_image(db, data, tmp_path / "image")
    expected = recovered(data)
    if tail is None:
        record = {"origin": origin, "lsn": 6, "method": "insert", "key": "torn", "value": 1}
        tail = orjson.dumps(record)
    with open(image / "table.txn", "r+b") as file:  # written into the preallocated zeros
        file.seek(end)
        file.write(tail)
    assert recovered(image) == expected
    assert "a write interrupted by a crash, never acknowledged" in caplog.text
    with Database(image) as db:  # and it goes on from there
        db.execute(Request("insert", key="after", value=True))
        db.commit()
    assert recovered(image) == {**expected, "after": True}
    assert [r["lsn"] for r in log_records(image)] == [1, 2, 3, 4, 5, 6]


def test_the_log_is_preallocated_while_open_and_exact_once_closed(data):
    with Database(data) as db:
        insert_many(db, 5)
        records = (data / "table.txn").read_bytes()
        end = db.stats()["log_bytes"]
        assert len(records) >= storage.PREALLOCATE and len(records) > end  # room ahead
        assert b"\0" not in records[:end] and not records[end:].strip(b"\0")
        assert records[:end].count(b"\n") == 6  # the header and 5 records
    closed = (data / "table.txn").read_bytes()
    assert closed.startswith(records[:end]) and b"\0" not in closed  # zeros cut at close
    assert unsealed(closed.splitlines(keepends=True)[-1]) == {"closed": 5}
    assert [r["lsn"] for r in log_records(data)] == [1, 2, 3, 4, 5]


def crash_image(db: Database, data: Path, image: Path) -> Path:
    """The data directory as a crash of ``db`` right now would leave it."""
    assert not db.needs_commit
    shutil.copytree(data, image)
    assert (image / "table.txn").read_bytes().endswith(b"\0")  # the preallocated zeros
    return image


def test_after_a_crash_recovery_cuts_the_zeros_and_writing_goes_on(data, tmp_path, caplog):
    with Database(data) as db:
        insert_many(db, 5)
        end = db.stats()["log_bytes"]
        image = crash_image(db, data, tmp_path / "image")
    expected = recovered(data)
    assert recovered(image) == expected
    assert (image / "table.txn").read_bytes()[end:] == sealed({"closed": 5})
    assert "dropping" not in caplog.text  # zeros are no news
    with Database(image) as db:
        db.execute(Request("insert", key="after", value=1))
        db.commit()
    assert recovered(image) == {**expected, "after": 1}
    assert [r["lsn"] for r in log_records(image)] == [1, 2, 3, 4, 5, 6]


def test_what_follows_the_zeros_was_never_synced_and_is_dropped(data, tmp_path, caplog):
    with Database(data) as db:
        insert_many(db, 3)
        end, origin = db.stats()["log_bytes"], db.origin
        image = crash_image(db, data, tmp_path / "image")
    # A later write whose block reached the disk before an earlier one's (no fsync
    # ordered them): a hole of zeros, then a whole record.
    record = {"origin": origin, "lsn": 5, "method": "insert", "key": "late", "value": 1}
    with open(image / "table.txn", "r+b") as file:
        file.seek((end // 4096 + 1) * 4096)  # a later sector of the same write
        file.write(sealed(record))
    assert recovered(image) == recovered(data)
    assert "on a sector boundary, which is what a crash leaves of a write" in caplog.text
    assert log_records(image) == log_records(data)  # the late record is gone from the log
    # but not lost: damage to a synced sector looks the same, and would hold acknowledged
    # records; what was dropped is kept, and the warning says where and how many.
    assert "1 of them whole, sealed records" in caplog.text
    [kept] = (image / "repaired").glob("*/table.txn.dropped")
    assert f"they are kept in {kept}" in caplog.text
    assert kept.read_bytes().lstrip(b"\0") == sealed(record)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_the_log_grows_its_preallocation_as_it_fills(data, monkeypatch):
    monkeypatch.setattr(logfile, "PREALLOCATE", 300)
    with Database(data) as db:
        for batch in range(20):
            insert_many(db, 7, prefix=f"b{batch}-")
        end = db.stats()["log_bytes"]
        assert end > 20 * 300
        assert end < (data / "table.txn").stat().st_size <= end + 300 + 7 * 150
    assert (data / "table.txn").stat().st_size == end + len(sealed({"closed": 140}))
    assert len(recovered(data)) == 140


def test_without_preallocation_the_log_appends_as_usual(data, monkeypatch):
    def unsupported(*args):  # e.g. a file system without fallocate
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(logfile.os, "posix_fallocate", unsupported)
    monkeypatch.setattr(storage.os, "posix_fallocate", unsupported)
    with Database(data) as db:
        insert_many(db, 4)
        assert (data / "table.txn").stat().st_size == db.stats()["log_bytes"]
    assert len(recovered(data)) == 4
    lines = (data / "table.txn").read_bytes().splitlines(keepends=True)
    assert unsealed(lines[1]) == {"preallocate": False}  # so recovery knows: no zeros


def test_a_full_disk_stops_the_preallocation_not_the_writes(data, monkeypatch, caplog):
    real = os.posix_fallocate

    def half_then_full(fd, offset, length):  # grows the file part of the way, then fails
        real(fd, offset, length // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    with Database(data) as db:
        monkeypatch.setattr(logfile.os, "posix_fallocate", half_then_full)
        insert_many(db, 300, size=4000)  # more than the first preallocation
        insert_many(db, 4, prefix="more")
    monkeypatch.undo()
    assert "no room to preallocate" in caplog.text
    assert len(recovered(data)) == 304
    assert b"\0" not in (data / "table.txn").read_bytes()  # the half-grown tail cut at close


def corrupt_line(path: Path, number: int, replacement: bytes | None) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    if replacement is None:
        del lines[number - 1]
    else:
        lines[number - 1] = replacement
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("replacement", "reason"),
    [
        (b"{not json\n", "a line without its checksum"),
        (b"\n", "a line without its checksum"),
        (sealed({"lsn": 1}).replace(b"1}", b"2}"), "its checksum does not match"),
        (None, "records are missing"),
        (sealed({"origin": "o", "lsn": "2"}), "needs 'origin' and 'lsn'"),
        (sealed([1, 2]), "neither a record nor a control line"),
    ],
)
def test_corruption_before_the_last_line_is_a_recovery_error_naming_file_and_line(
    data, replacement, reason
):
    with Database(data) as db:
        insert_many(db, 4)
    corrupt_line(data / "table.txn", 3, replacement)  # the header, records 1, 2, ...
    before = (data / "table.txn").read_bytes()
    with pytest.raises(RecoveryError) as caught:
        Database(data)
    assert caught.value.path == data / "table.txn" and caught.value.line == 3
    assert reason in str(caught.value) and "table.txn, line 3" in str(caught.value)
    assert (data / "table.txn").read_bytes() == before  # nothing dropped or truncated


def test_a_record_that_is_no_valid_mutation_is_a_recovery_error(data):
    with Database(data) as db:
        insert_many(db, 2)
        origin = db.origin
    with open(data / "table.txn", "ab") as file:
        file.write(sealed({"origin": origin, "lsn": 3, "method": "scan"}))
        file.write(sealed({"origin": origin, "lsn": 4, "method": "insert"}))
        file.write(sealed({"closed": 4}))
    with pytest.raises(RecoveryError, match="line 5: not a valid log record"):
        Database(data)


# ---- the checkpoint and compaction ---------------------------------------------


def test_compaction_writes_a_checkpoint_and_starts_a_short_log(data):
    with Database(data, compact_after=10) as db:
        insert_many(db, 20)
        compact(db)
        stats = db.stats()
        assert stats["compactions"] == 1 and stats["log_entries"] == 0
        assert stats["last_fork_ms"] >= 0 and stats["last_pause_ms"] >= stats["last_fork_ms"]
        print(f"fork pause with 20 keys: {stats['last_fork_ms']:.2f} ms")
        db.execute(Request("remove", key="k0"))
        db.commit()
    assert not (data / "table.txn.old").exists()
    assert [r["lsn"] for r in log_records(data)] == [21]
    lines = (data / "table.ckpt").read_bytes().splitlines(keepends=True)
    assert unsealed(lines[0])["lsn"] == 20 and unsealed(lines[-1])["keys"] == 20
    assert recovered(data) == {f"k{i}": {"i": i, "pad": "x" * 10} for i in range(1, 20)}


def test_writes_made_while_the_child_runs_are_kept(data):
    with Database(data, compact_after=10) as db:
        insert_many(db, 30_000, size=100)  # big enough for the child to take a while
        db.maintain()
        assert db.stats()["compacting"]
        assert 0 < db.seconds_until_maintenance() <= 0.05  # the loop comes back to reap it
        covered = db.stats()["lsn"]
        for i in range(50):
            db.execute(Request("insert", key=f"during{i}", value=i))
            db.execute(Request("remove", key=f"k{i}"))
            db.commit()
        expected = dict(db.table.data)
        wait_until(lambda: db.maintain() or not db.stats()["compacting"], what="compaction")
        assert db.stats()["compactions"] == 1 and db.stats()["log_entries"] == 100
    checkpoint_lsn = unsealed((data / "table.ckpt").read_bytes().split(b"\n", 1)[0] + b"\n")["lsn"]
    assert checkpoint_lsn == covered
    assert [r["lsn"] for r in log_records(data)] == list(range(covered + 1, covered + 101))
    assert recovered(data) == expected


def test_every_crash_point_of_a_compaction_recovers(data, tmp_path):
    """Copies of the directory at each step of a compaction, each recovered on its own."""
    snapshots = {}

    def snapshot(name: str) -> dict:
        shutil.copytree(data, tmp_path / name, ignore=shutil.ignore_patterns("table.lock"))
        return dict(db.table.data)

    def closed(directory: Path, end: int, lsn: int) -> None:
        """What a rotation does before its rename: the close record, the zeros cut."""
        with open(directory / "table.txn", "r+b") as file:
            file.seek(end)
            file.write(sealed({"closed": lsn}))
            file.truncate()

    with Database(data, compact_after=10) as db:
        insert_many(db, 20_000, size=50)
        snapshots["before"] = snapshot("before")
        before_end, before_lsn = db.stats()["log_bytes"], db.stats()["lsn"]
        db.maintain()  # rotated to table.txn.old and forked
        db.execute(Request("insert", key="while-compacting", value=1))
        db.commit()
        snapshots["during"] = snapshot("during")
        wait_until(lambda: db.maintain() or not db.stats()["compacting"], what="compaction")
        final = dict(db.table.data)
    assert snapshots["during"] == final
    # The checkpoint renamed but table.txn.old not yet removed.
    late = tmp_path / "late"
    shutil.copytree(tmp_path / "during", late)
    shutil.copy(data / "table.ckpt", late / "table.ckpt")
    # Killed between the rename of table.txn and the creation of the new one.
    renamed = tmp_path / "renamed"
    shutil.copytree(tmp_path / "before", renamed)
    closed(renamed, before_end, before_lsn)
    os.rename(renamed / "table.txn", renamed / "table.txn.old")
    # A checkpoint half-written by a child that died.
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "during", half)
    (half / "table.ckpt.tmp").write_bytes((data / "table.ckpt").read_bytes()[:5000])

    assert recovered(tmp_path / "before") == snapshots["before"]
    assert recovered(tmp_path / "during") == final
    assert recovered(late) == final
    assert recovered(renamed) == snapshots["before"]
    assert recovered(half) == final and not (half / "table.ckpt.tmp").exists()


def test_a_failed_child_loses_nothing_and_is_retried(data):
    with Database(data, compact_after=10) as db:
        insert_many(db, 150_000)
        for pid in start_compaction(db):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: db.maintain() or not db.stats()["compacting"], what="reaping")
        stats = db.stats()
        assert stats["compaction_failures"] == 1 and stats["compactions"] == 0
        assert db.seconds_until_maintenance() > 0.5  # backing off before the retry
        db.maintain()
        assert not db.stats()["compacting"]
        insert_many(db, 10, prefix="after")
        expected = dict(db.table.data)
    assert (data / "table.txn.old").exists()
    assert unsealed((data / "table.ckpt").read_bytes().splitlines(keepends=True)[0])["lsn"] == 0
    assert recovered(data) == expected
    with Database(data, compact_after=10) as db:  # the next compaction covers table.txn.old too
        compact(db)
    assert not (data / "table.txn.old").exists()
    assert recovered(data) == expected


def test_checkpoint_cost_is_amortized_over_as_many_writes_as_keys(data):
    with Database(data, compact_after=10) as db:
        insert_many(db, 1000)
        compact(db)
        insert_many(db, 999)  # overwrites: 999 log entries for 1000 keys
        db.maintain()
        assert not db.stats()["compacting"] and db.seconds_until_maintenance() is None
        insert_many(db, 1)
        db.maintain()
        assert db.stats()["compacting"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda lines: lines[:-1], "no footer"),
        (lambda lines: [lines[0], lines[2]], "line 2: the file holds 0 keys \\(the footer: 5\\)"),
        (lambda lines: [sealed({"format": "other"}), *lines[1:]], "line 1: not a hashtable-ch"),
        (
            lambda lines: [lines[0], sealed({"entries": [["k"]]}), *lines[2:]],
            "line 2: entries must",
        ),
        (lambda lines: [lines[0], b"{oops\n", *lines[1:]], "line 2: a line without its checksum"),
        (lambda lines: [*lines, sealed([])], "line 4: data after the footer"),
        (lambda lines: [lines[0], lines[1].replace(b"k1", b"k7"), lines[2]], "line 2: its checks"),
    ],
)
def test_a_damaged_checkpoint_is_a_recovery_error(data, damage, reason):
    with Database(data, compact_after=1) as db:
        insert_many(db, 5)
        compact(db)
    path = data / "table.ckpt"
    path.write_bytes(b"".join(damage(path.read_bytes().splitlines(keepends=True))))
    with pytest.raises(RecoveryError, match=reason) as caught:
        Database(data)
    assert caught.value.path == path


# ---- the directory --------------------------------------------------------------


def test_one_process_at_a_time_per_directory(data):
    with Database(data):
        started = time.monotonic()
        with pytest.raises(DataDirBusy, match=f"in use by another process \\(pid {os.getpid()}\\)"):
            Database(data, lock_timeout=0.2)
        assert time.monotonic() - started < 5
    Database(data).close()  # free again


def test_close_stops_a_running_compaction_and_leaves_a_recoverable_directory(data):
    with Database(data, compact_after=10) as db:
        insert_many(db, 50_000)
        child = start_compaction(db)
        expected = dict(db.table.data)
    assert child and all(not Path(f"/proc/{pid}").exists() for pid in child)
    assert recovered(data) == expected


def test_unusable_directories_and_options_are_clear_errors(data, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(RecoveryError, match="cannot use as data directory"):
        Database(afile)
    with pytest.raises(ValueError, match="sync must be one of"):
        Database(data, sync="sometimes")
    with pytest.raises(ValueError, match="compact_after"):
        Database(data, compact_after=0)
    Database(data).close()
    (data / "table.origin").write_text("not an id!\n")
    with pytest.raises(RecoveryError, match="not a server id"):
        Database(data)


def test_sync_modes_write_at_commit_and_everysec_syncs_within_a_second(data, tmp_path):
    with Database(tmp_path / "everysec", sync="everysec") as db:
        insert_many(db, 3)
        assert len(log_records(tmp_path / "everysec")) == 3  # written at commit
        assert 0 <= db.seconds_until_maintenance() <= 1.0
        time.sleep(db.seconds_until_maintenance())
        db.maintain()
        assert db.seconds_until_maintenance() is None  # synced
    with Database(tmp_path / "no", sync="no") as db:
        insert_many(db, 3)
        assert len(log_records(tmp_path / "no")) == 3
        assert db.seconds_until_maintenance() is None
    for mode in ("everysec", "no"):
        assert len(recovered(tmp_path / mode)) == 3


def test_a_failing_write_raises_storage_failure(tmp_path):
    """A real write error (file size limit), in a child process so the limit stays there."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from hashtable.database import Database, StorageFailure
        from hashtable.request import Request
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        db = Database({str(tmp_path / "data")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        db.execute(Request("insert", key="big", value="x" * 10000))
        try:
            db.commit()
        except StorageFailure as error:
            print("StorageFailure:", error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert "StorageFailure: cannot write" in result.stdout, result.stderr
    assert "File too large" in result.stdout


def test_values_survive_exactly(data):
    values = [
        0,
        -1,
        2**63 - 1,
        1.5,
        1e300,
        "",
        '\u00e9\U0001f600\n"',
        None,
        True,
        [],
        {},
        {"a": [1, {"b": None}]},
    ]
    with Database(data) as db:
        for i, value in enumerate(values):
            db.execute(Request("insert", key=f"key\n{i}\u2028", value=value))
        db.commit()
    with Database(data) as db:
        for i, value in enumerate(values):
            outcome = db.execute(Request("lookup", key=f"key\n{i}\u2028"))
            assert outcome.status is Status.OK and outcome.result == value
            assert type(outcome.result) is type(value)


def test_a_table_grown_at_run_time_is_frozen_out_of_full_collections(data, monkeypatch):
    """Every FREEZE_EVERY writes, what survives is frozen (netkit.memory), so a
    full collection does not visit a table that grew after recovery."""
    import gc

    from hashtable import database

    monkeypatch.setattr(database, "FREEZE_EVERY", 50)
    with Database(data, sync="no") as db:
        values = [{"n": i} for i in range(49)]
        for i, value in enumerate(values):
            db.execute(Request("insert", key=f"k{i}", value=value))
        db.maintain()
        before = gc.get_freeze_count()
        db.execute(Request("insert", key="k49", value={"n": 49}))
        db.maintain()
        assert gc.get_freeze_count() > before


def test_a_lost_server_id_file_is_restored_from_the_checkpoint(data, caplog):
    """A backup that copied table.ckpt and table.txn but not table.origin: a new id
    would make the log's records another server's (and --repair would drop them)."""
    with Database(data) as db:
        insert_many(db, 5)
        origin = db.origin
    with Database(data) as db:  # a second run: its records in the log after the checkpoint
        db.execute(Request("insert", key="later", value=1))
        db.commit()
    expected = recovered(data)
    (data / "table.origin").unlink()
    assert recovered(data) == expected and "later" in expected
    assert (data / "table.origin").read_text().strip() == origin
    assert f"restored the server id {origin}" in caplog.text


def test_a_lost_server_id_with_no_checkpoint_to_name_it_is_refused_changing_nothing(data):
    with Database(data) as db:
        insert_many(db, 3)
    (data / "table.origin").unlink()
    (data / "table.ckpt").unlink(missing_ok=True)
    with pytest.raises(RecoveryError, match="no checkpoint names its server id"):
        Database(data)
    assert not (data / "table.origin").exists()
