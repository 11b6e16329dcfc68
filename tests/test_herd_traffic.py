"""The herd's log file (herd.traffic): rotation, a disk that fails, records among the lines."""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path

import pytest

import herd.traffic
from herd.traffic import RecordHandler, TrafficLog


def texts(path: Path) -> list[str]:
    """The lines of a log without their time stamps."""
    return [line.split(" ", 2)[2] for line in path.read_text().splitlines()]


def test_past_max_bytes_the_log_is_rotated_and_only_the_backups_are_kept(tmp_path):
    path = tmp_path / "Hands.log"
    log = TrafficLog(path, max_bytes=300, backups=2)
    for turn in range(40):
        log.line(f"in  client 127.0.0.1:5: IAMAT turn-{turn:02d} +1+1 1")  # 60 bytes a line
        log.end_turn()
    log.close()
    names = sorted(entry.name for entry in tmp_path.iterdir())
    assert names == ["Hands.log", "Hands.log.1", "Hands.log.2"]
    for name in names:
        assert 0 < (tmp_path / name).stat().st_size <= 300
    kept = texts(path.with_name("Hands.log.2")) + texts(path.with_name("Hands.log.1")) + texts(path)
    assert kept[-1].endswith("turn-39 +1+1 1")  # the newest lines, oldest first, none repeated
    assert kept == sorted(kept) and len(set(kept)) == len(kept)


def test_with_no_backups_a_full_log_begins_again(tmp_path):
    path = tmp_path / "Hands.log"
    log = TrafficLog(path, max_bytes=100, backups=0)
    for turn in range(5):
        log.line(f"line {turn} " + "x" * 40)
        log.end_turn()
    log.close()
    assert [entry.name for entry in tmp_path.iterdir()] == ["Hands.log"]
    assert texts(path)[-1].startswith("line 4 ") and path.stat().st_size <= 100


def test_a_log_that_cannot_be_written_is_said_once_and_the_server_goes_on(capfd):
    log = TrafficLog(Path("/dev/full"))  # every write: ENOSPC
    for turn in range(3):
        log.line(f"in  client 127.0.0.1:5: IAMAT t{turn} +1+1 1")
        log.end_turn()  # must not raise
    log.close()
    error = capfd.readouterr().err
    assert error.count("cannot write the log /dev/full") == 1, error
    assert "No space left on device" in error and "Traceback" not in error


def test_once_writing_works_again_the_log_says_how_much_was_lost(tmp_path, monkeypatch, capfd):
    path = tmp_path / "Hands.log"
    log = TrafficLog(path)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(herd.traffic.os, "write", full)  # a disk that fills, then has room
    log.line("lost line")
    log.end_turn()
    monkeypatch.setattr(herd.traffic.os, "write", real_write)
    log.line("kept line")
    log.end_turn()
    log.close()
    lost = len(" lost line\n") + len("2026-01-01 00:00:00.000")
    assert texts(path) == [f"({lost} bytes of log lines were lost: not written)", "kept line"]
    assert capfd.readouterr().err.count("cannot write the log") == 1


@pytest.fixture
def record_logger(tmp_path):
    timers: list = []
    log = TrafficLog(tmp_path / "t.log", flush_interval=0.01,
                     call_later=lambda delay, callback: timers.append(callback))  # fmt: skip
    logger = logging.getLogger("herd.test-traffic")
    handler = RecordHandler(log)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield log, logger
    logger.removeHandler(handler)
    log.close()


def test_records_take_their_place_among_the_traffic_lines(tmp_path, record_logger):
    """A record written by a handler of its own went ahead of the lines the log still held."""
    log, logger = record_logger
    log.line("in  peer Holiday: HERD herd Holiday Welsh e1 - 0")
    log.end_turn()  # held for the flush interval
    logger.info("link to Holiday up (accepted)")
    log.line("out peer Holiday: ACK 0")
    log.end_turn()
    log.flush()
    assert texts(tmp_path / "t.log") == [
        "in  peer Holiday: HERD herd Holiday Welsh e1 - 0",
        "link to Holiday up (accepted)",
        "out peer Holiday: ACK 0",
    ]


def test_a_record_from_another_thread_is_written_at_once_and_escaped(tmp_path, record_logger):
    _, logger = record_logger
    thread = threading.Thread(target=logger.warning, args=("cannot look %s up", "Hands\r\x1b[2J"))
    thread.start()
    thread.join()
    assert texts(tmp_path / "t.log") == ["cannot look Hands\\r\\x1b[2J up"]
