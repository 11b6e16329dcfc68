"""Damage is detected, never served: checksums, honest tails, repair, start-up checks, upgrade.

The engine's own reading is tested in-process on real files; what a user meets
(exit status 2 and one message, ``--repair``, an unusable directory) with real
``HashTableServer.py`` processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.processes import ROOT, python_script, run_program
from hashtable.database import Database
from hashtable.request import Request, Status
from hashtable.sealing import seal, unseal
from hashtable.storage import CHECKPOINT, LOG, REPAIRS, RecoveryError
from tests.server_support import Wire, start_server

FIXTURES = ROOT / "tests" / "fixtures"


def make_table(data: Path, keys: int = 40, compact: bool = True) -> dict:
    """A stopped server's directory: a checkpoint of ``keys`` keys, then a log of changes."""
    with Database(data, compact_after=10) as db:
        for i in range(keys):
            db.execute(Request("insert", key=f"k{i}", value={"i": i, "text": "é" * (i % 5)}))
            db.commit()
        if compact:
            db.maintain()
            while db.stats()["compacting"]:
                db.maintain()
        for i in range(0, keys, 3):
            db.execute(Request("remove", key=f"k{i}"))
        db.execute(Request("insert", key="last", value=[1, 2], client="c1", seq=1))
        db.commit()
        return dict(db.table.data)


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def recovered(data: Path, **options) -> dict:
    with Database(data, **options) as db:
        return dict(db.table.data)


def refusal(data: Path) -> RecoveryError:
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.name != "table.lock"}
    with pytest.raises(RecoveryError) as caught:
        Database(data)
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.name != "table.lock"}
    assert after == before, "a refused recovery must change nothing"
    return caught.value


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


# ---- checksums ----------------------------------------------------------------------


def test_every_line_of_both_files_is_sealed(data):
    make_table(data)
    for name in (LOG, CHECKPOINT):
        for line in lines_of(data / name):
            assert unseal(line) is not None, f"{name}: {line!r}"


@pytest.mark.parametrize(
    ("name", "edit"), [(LOG, (b'"key":"k3"', b'"key":"k4"')), (CHECKPOINT, (b'"i":4', b'"i":5'))]
)
def test_an_edited_value_that_is_still_json_is_refused_with_file_and_line(data, name, edit):
    make_table(data)
    lines = lines_of(data / name)
    number = next(i for i, line in enumerate(lines, 1) if edit[0] in line)
    lines[number - 1] = lines[number - 1].replace(*edit, 1)
    (data / name).write_bytes(b"".join(lines))
    error = refusal(data)
    assert error.path == data / name and error.line == number
    assert "checksum does not match" in str(error) and error.repairable


# ---- honest tails ---------------------------------------------------------------------


def test_truncating_the_log_is_a_cut_not_a_torn_write(data):
    make_table(data, compact=False)
    os.truncate(data / LOG, 2000)
    error = refusal(data)
    assert "cut short" in str(error) and "acknowledged" not in str(error)
    assert error.line is not None and error.repairable


@pytest.mark.parametrize("deleted", [1, 2])
def test_deleting_the_last_lines_is_detected(data, deleted):
    make_table(data)
    lines = lines_of(data / LOG)
    (data / LOG).write_bytes(b"".join(lines[:-deleted]))
    error = refusal(data)
    assert "without its close record" in str(error) and "cut short" in str(error)


def test_deleting_the_first_records_of_the_log_is_detected(data):
    make_table(data)
    lines = lines_of(data / LOG)
    (data / LOG).write_bytes(lines[0] + b"".join(lines[2:]))
    error = refusal(data)
    assert error.line == 2 and "first records were removed" in str(error)


def test_a_raised_checkpoint_lsn_is_refused(data):
    make_table(data)
    lines = lines_of(data / CHECKPOINT)
    header = orjson.loads(unseal(lines[0]))
    lines[0] = lines[0].replace(b'"lsn":%d' % header["lsn"], b'"lsn":%d' % (header["lsn"] + 50))
    (data / CHECKPOINT).write_bytes(b"".join(lines))
    error = refusal(data)
    assert error.path == data / CHECKPOINT and error.line == 1


def test_a_log_that_does_not_continue_the_checkpoint_is_refused(data):
    make_table(data)
    (data / CHECKPOINT).unlink()  # the log starts at lsn 41: records 1 to 40 are gone
    error = refusal(data)
    assert "records 1 to 40 are missing" in str(error)


def test_a_missing_log_is_refused(data):
    make_table(data)
    (data / LOG).unlink()
    error = refusal(data)
    assert "missing" in str(error) and error.repairable


def test_zeros_inside_a_line_are_damage_not_a_crash(data):
    make_table(data)
    lines = lines_of(data / LOG)
    lines[3] = lines[3][:10] + b"\0" + lines[3][11:]
    (data / LOG).write_bytes(b"".join(lines))
    error = refusal(data)
    assert error.line == 4 and "zero byte" in str(error)


def test_a_zeroed_sector_in_a_closed_log_is_damage(data):
    with Database(data) as db:
        for i in range(200):
            db.execute(Request("insert", key=f"k{i}", value="x" * 30))
        db.commit()
    with open(data / LOG, "r+b") as file:  # as if a sector was lost
        file.seek(4096)
        file.write(bytes(512))
    assert "zero byte" in str(refusal(data))


# ---- repair ---------------------------------------------------------------------------


def test_repair_keeps_what_precedes_the_damage_and_sets_the_files_aside(data, caplog):
    make_table(data, compact=False)
    lines = lines_of(data / LOG)
    lines[10] = lines[10].replace(b"k9", b"k?")  # record lsn 10
    damaged = b"".join(lines)
    (data / LOG).write_bytes(damaged)
    with Database(data, repair=True) as db:
        assert sorted(db.table.data) == sorted(f"k{i}" for i in range(9))
        assert db.stats()["lsn"] == 9
        db.execute(Request("insert", key="after", value=1))
        db.commit()
    assert "repair: dropped" in caplog.text and "line 11" in caplog.text
    (aside,) = (data / REPAIRS).iterdir()
    assert (aside / LOG).read_bytes() == damaged  # kept as it was, for inspection
    assert sorted(recovered(data)) == sorted([*(f"k{i}" for i in range(9)), "after"])


def test_repair_of_a_damaged_checkpoint_block_keeps_the_other_lines(data, caplog):
    expected = make_table(data)
    lines = lines_of(data / CHECKPOINT)
    lines[1] = lines[1].replace(b'"k1"', b'"k!"')
    (data / CHECKPOINT).write_bytes(b"".join(lines))
    assert refusal(data).line == 2
    table = recovered(data, repair=True)
    assert "repair: dropped" in caplog.text and "table.ckpt, line 2" in caplog.text
    assert set(table) <= set(expected) and "last" in table  # the log on top still applied
    assert all(table[key] == expected[key] for key in table)  # nothing changed, only lost


def test_repair_of_a_missing_log_starts_from_the_checkpoint(data):
    make_table(data)
    (data / LOG).unlink()
    assert len(recovered(data, repair=True)) == 40
    assert len(recovered(data)) == 40  # and the directory is whole again


# ---- the previous format ------------------------------------------------------------


def test_a_format_1_directory_is_read_and_upgraded_without_loss(data):
    shutil.copytree(FIXTURES / "format1", data)
    expected = orjson.loads((FIXTURES / "format1-expected.json").read_bytes())
    with Database(data) as db:
        assert db.table.data == expected["table"]
        assert {k: list(v) for k, v in db.table.versions.items()} == expected["versions"]
        assert db.stats()["lsn"] == expected["lsn"]
        again = db.execute(Request("insert", key="with-session", value=[1], client="c-1", seq=1))
        assert again.status is Status.OK and not db.needs_commit  # its stored outcome
    assert all(unseal(line) for name in (LOG, CHECKPOINT) for line in lines_of(data / name))
    assert recovered(data) == expected["table"]


def test_a_format_1_directory_missing_its_server_id_file_gets_it_from_the_checkpoint(data):
    """Format 1's checkpoint header is plain JSON, not sealed: it names the id too."""
    shutil.copytree(FIXTURES / "format1", data)
    origin = (data / "table.origin").read_text().strip()
    (data / "table.origin").unlink()
    expected = orjson.loads((FIXTURES / "format1-expected.json").read_bytes())
    with Database(data) as db:
        assert db.origin == origin and db.table.data == expected["table"]
    assert (data / "table.origin").read_text().strip() == origin


def test_a_damaged_format_1_header_is_not_taken_for_the_server_id(data):
    """Unsealed, a format-1 header has no checksum: an id that one damaged character
    changed no longer matches the one among the logs it applied, and is refused."""
    shutil.copytree(FIXTURES / "format1", data)
    origin = (data / "table.origin").read_text().strip()
    (data / "table.origin").unlink()
    checkpoint = (data / CHECKPOINT).read_bytes()
    damaged = origin[:-1] + ("0" if origin[-1] != "0" else "1")
    (data / CHECKPOINT).write_bytes(
        checkpoint.replace(f'"origin":"{origin}"'.encode(), f'"origin":"{damaged}"'.encode(), 1)
    )
    with pytest.raises(RecoveryError, match="not a checkpoint header naming the server id"):
        Database(data)
    assert not (data / "table.origin").exists()


def test_an_upgrade_interrupted_after_its_checkpoint_recovers(data, tmp_path):
    shutil.copytree(FIXTURES / "format1", data)
    old_log = (data / LOG).read_bytes()
    Database(data).close()
    # As if killed after the first checkpoint (which says a log of format 1 may
    # follow), before the new log replaced the old one.
    lines = lines_of(data / CHECKPOINT)
    header = orjson.loads(unseal(lines[0]))
    lines[0] = seal(orjson.dumps({**header, "logs": 1}))
    (data / CHECKPOINT).write_bytes(b"".join(lines))
    (data / LOG).write_bytes(old_log)
    expected = orjson.loads((FIXTURES / "format1-expected.json").read_bytes())
    assert recovered(data) == expected["table"]


# ---- the property: damage anywhere --------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("template") / "data"
    expected = make_table(data, keys=30)
    (data / "table.lock").unlink()
    return data, expected


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=st.sampled_from([LOG, CHECKPOINT]), where=st.floats(0, 1), bit=st.integers(0, 7))
def test_a_flipped_bit_anywhere_is_refused_or_changes_nothing(template, tmp_path, name, where, bit):
    source, expected = template
    data = tmp_path / f"flip-{name}-{where}-{bit}"
    shutil.copytree(source, data)
    content = bytearray((data / name).read_bytes())
    position = min(int(where * len(content)), len(content) - 1)
    content[position] ^= 1 << bit
    (data / name).write_bytes(bytes(content))
    try:
        table = recovered(data)
    except RecoveryError as error:
        assert error.path == data / name and error.line is not None, str(error)
    else:
        assert table == expected  # never a changed value
    shutil.rmtree(data)


# ---- what users meet: real servers -------------------------------------------------------


def server(data: Path, *extra: str) -> subprocess.CompletedProcess:
    """A server that is expected to refuse to start."""
    return run_program(
        python_script(
            "HashTableServer.py",
            "integrity",
            "--data-dir",
            str(data),
            "--host",
            "127.0.0.1",
            "--catalog",
            "127.0.0.1:9",
            *extra,
        ),
        timeout=30,
    )


def test_a_damaged_directory_stops_the_server_until_repair_is_asked(data, spawn):
    make_table(data)
    lines = lines_of(data / LOG)
    lines[2] = lines[2].replace(b"remove", b"rEmove")
    (data / LOG).write_bytes(b"".join(lines))
    result = server(data)
    assert result.returncode == 2
    assert f"{data / LOG}, line 3: its checksum does not match" in result.stderr
    assert "--repair" in result.stderr and "Traceback" not in result.stderr
    handle = start_server(spawn, data, "--repair")
    with Wire(handle.port) as wire:
        assert wire.call({"method": "lookup", "key": "k1"})["status"] == "ok"
    assert "repair: dropped" in handle.log()


@contextlib.contextmanager
def small_mount(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only: else the test is skipped)."""
    path.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small file system needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_directory_that_cannot_be_written_is_refused_at_start(tmp_path):
    data = tmp_path / "data"
    make_table(data)
    if os.geteuid() == 0:  # root writes through mode bits: a read-only mount it is
        with small_mount(tmp_path / "ro", "4m") as mount:
            shutil.copytree(data, mount / "data")
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            result = server(mount / "data")
    else:
        data.chmod(0o555)
        result = server(data)
        data.chmod(0o700)
    assert result.returncode == 2, result.stderr
    assert "cannot write in the data directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_without_room_for_the_log_is_refused_at_start(tmp_path):
    with small_mount(tmp_path / "small", "512k") as mount:
        result = server(mount / "data")
    assert result.returncode == 2, result.stderr
    assert "no room for the log: it needs 1024 KiB" in result.stderr
