"""Simulated torn log writes: what a crash in the middle of appending a record leaves.

The server writes each turn's records with one pwrite() and fsyncs before any
reply, so a record cut short was never acknowledged, and recovery must drop it
(docs/storage.md). A real kill rarely lands inside pwrite(); this makes the case
happen on demand: the next record the server would have written, cut at a
random byte, before its seal ends.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

from hashtable.sealing import seal, unseal
from hashtable.storage import LOG, OLD_LOG, ORIGIN


def torn_record(log: bytes, origin: str, rng: random.Random) -> bytes:
    """A random proper prefix of the sealed record that would follow ``log``'s last one."""
    record = {"origin": origin, "lsn": 1, "method": "insert", "key": "torn", "value": {}}
    for line in reversed(log.split(b"\n")[:-1]):  # complete lines only
        text = unseal(line + b"\n")
        last = orjson.loads(text) if text is not None else None
        if isinstance(last, dict) and isinstance(last.get("lsn"), int):
            record = {**last, "lsn": last["lsn"] + 1}
            if isinstance(last.get("seq"), int):
                record["seq"] = last["seq"] + 1
            break
    whole = seal(orjson.dumps(record))
    return whole[: rng.randrange(1, len(whole))]


def tear_log(data_dir: Path, rng: random.Random) -> int:
    """Writes a torn record after the last one of ``table.txn``; returns how many bytes.

    It goes where the server would have written it: over the zeros that follow
    the records of a log in use (see docs/storage.md). A log without zeros after
    it (none yet: killed between a rotation's renames) is left alone: 0."""
    log_path = data_dir / LOG
    log = log_path.read_bytes() if log_path.exists() else b""
    records, zeros, _ = log.partition(b"\0")
    if not zeros:
        return 0
    last = records
    if records.count(b"\n") <= 1 and (data_dir / OLD_LOG).exists():
        last = (data_dir / OLD_LOG).read_bytes()  # just rotated: the last record is there
    origin = (data_dir / ORIGIN).read_text().strip()
    torn = torn_record(last.partition(b"\0")[0], origin, rng)
    with open(log_path, "r+b") as file:
        file.seek(len(records))
        file.write(torn)
    return len(torn)
