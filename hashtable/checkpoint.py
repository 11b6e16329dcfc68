"""The checkpoint file, ``table.ckpt``: the whole table as of one log position.

Format 2 (docs/storage.md), every line sealed (``hashtable.sealing``)::

    {"format":"hashtable-checkpoint","version":2,"origin":"1ca0...","lsn":24,"applied":{...},...}
    {"sessions":[{"client":"c1","floor":3,"outcomes":[...]}, ...]}
    {"entries":{"k0":0,"b":[[]], ...}}
    {"versions":[["k0",1767000000000000,"w1"], ...]}
    {"tombstones":[["gone",1767000000000005,"w1"], ...]}
    {"footer":true,"keys":2,"sessions":1,"versions":1,"tombstones":1,"lines":6}

Entries, sessions and stamps come in blocks of up to ``BLOCK`` per line: one
checksum and one ``orjson.loads`` per thousand keys instead of per key makes
reading a checkpoint faster than format 1's one line per key was, checksums
included. Format 1 (no seals, one item per line) is still read, so that a
directory written by the previous version opens; the server then rewrites it
in format 2 (``hashtable.recovery``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from hashtable.sealing import is_sealed_shape, seal, unseal
from hashtable.storage import CHECKPOINT, RecoveryError
from netkit import files

FORMAT = "hashtable-checkpoint"
VERSION = 2
BLOCK = 1024  # items per line
_NONE: Mapping[str, Any] = {}
_dumps = orjson.dumps


@dataclass
class Checkpoint:
    path: Path
    version: int  # of the file's format
    applied: dict[str, int]  # per origin, the last lsn whose effect the checkpoint holds
    data: dict[str, Any] = field(default_factory=dict)
    sessions: list[tuple[int, Any]] = field(default_factory=list)  # (line number, row)
    # Versioned writes (docs/cluster.md): key -> (number, client), for live keys and
    # for tombstones (removed keys), each in the order written.
    versions: dict[str, tuple[int, str]] = field(default_factory=dict)
    tombstones: dict[str, tuple[int, str]] = field(default_factory=dict)
    # With repair: what could not be read, one sentence each (file and line).
    dropped: list[str] = field(default_factory=list)
    # The format of the logs that continue it: 1 only while a directory of the
    # previous version is being upgraded, when a log without a header is legitimate.
    logs: int = 2


def write_checkpoint(
    directory: Path,
    *,
    origin: str,
    applied: dict[str, int],
    sessions: Iterable[dict[str, Any]],
    data: dict[str, Any],
    versions: Mapping[str, tuple[int, str]] = _NONE,
    tombstones: Mapping[str, tuple[int, str]] = _NONE,
    logs: int = 2,
) -> None:
    """Writes ``table.ckpt`` atomically: temporary file, fsync, rename, fsync directory.

    ``logs``: the format of the logs that continue it (see ``Checkpoint.logs``)."""
    path = directory / CHECKPOINT
    temporary = files.temporary_path(path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "origin": origin,
        "lsn": applied.get(origin, 0),
        "applied": applied,
        "logs": logs,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    counts = {"keys": 0, "sessions": 0, "versions": 0, "tombstones": 0}
    lines = 1
    with open(temporary, "wb", buffering=1 << 20, opener=files.open_private) as file:
        file.write(seal(_dumps(header)))
        stamps_of = ((k, n, c) for k, (n, c) in versions.items())
        tombs_of = ((k, n, c) for k, (n, c) in tombstones.items())
        for kind, items in (
            ("sessions", iter(sessions)),
            ("entries", iter(data.items())),
            ("versions", stamps_of),
            ("tombstones", tombs_of),
        ):
            count = "keys" if kind == "entries" else kind
            while block := list(islice(items, BLOCK)):
                # Entries as an object: JSON keys are strings, and a parsed object
                # goes into the table with one dict.update, no loop in Python.
                file.write(seal(_dumps({kind: dict(block) if kind == "entries" else block})))
                counts[count] += len(block)
                lines += 1
        footer = {"footer": True, **counts, "lines": lines + 1}
        file.write(seal(_dumps(footer)))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    files.fsync_dir(directory)


def read_checkpoint(directory: Path, *, repair: bool = False) -> Checkpoint | None:
    """Loads ``table.ckpt``, or None when there is none.

    A damaged file raises RecoveryError naming the line; with ``repair``, the
    lines that are intact are kept, and ``dropped`` says what was not."""
    path = directory / CHECKPOINT
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RecoveryError(path, None, f"cannot read: {error}") from None
    with file:
        first = file.readline()
        if not is_sealed_shape(first):
            return _read_format1(path, first, file)
        reader = _Reader(path, repair)
        checkpoint = reader.header(first)
        reader.body(checkpoint, file)
    return checkpoint


class _Reader:
    """Reads a format 2 checkpoint; in repair mode notes damage instead of raising."""

    def __init__(self, path: Path, repair: bool) -> None:
        self.path = path
        self.repair = repair

    def damaged(self, checkpoint: Checkpoint | None, line: int | None, reason: str) -> None:
        if not self.repair or checkpoint is None:
            raise RecoveryError(self.path, line, reason, repairable=checkpoint is not None)
        where = f"line {line}" if line is not None else "the end"
        checkpoint.dropped.append(f"{self.path}, {where}: {reason}")

    def header(self, line: bytes) -> Checkpoint:
        text = unseal(line)
        header = _loads(text) if text is not None else None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            why = "the header's checksum does not match" if text is None else f"not a {FORMAT}"
            if not self.repair:
                raise RecoveryError(self.path, 1, why, repairable=True)
            # Its position is lost with it: recovery takes it from where the log starts.
            checkpoint = Checkpoint(self.path, VERSION, {})
            checkpoint.dropped.append(f"{self.path}, line 1: {why} (the header: what it covers)")
            return checkpoint
        if header.get("version") != VERSION:
            raise RecoveryError(self.path, 1, f"unsupported version {header.get('version')!r}")
        applied = header.get("applied")
        if not isinstance(applied, dict) or not all(
            type(lsn) is int and lsn >= 0 for lsn in applied.values()
        ):
            raise RecoveryError(self.path, 1, "'applied' must map origins to log sequence numbers")
        logs = 1 if header.get("logs") == 1 else 2
        return Checkpoint(self.path, VERSION, applied, logs=logs)

    def body(self, checkpoint: Checkpoint, lines: Iterable[bytes]) -> None:
        footer = None
        number = 1
        for number, line in enumerate(lines, 2):
            if footer is not None:
                self.damaged(checkpoint, number, "data after the footer")
                break
            text = unseal(line)
            item = _loads(text) if text is not None else None
            if type(item) is not dict or len(item) == 0:
                self.damaged(checkpoint, number, _why(line, text))
                continue
            problem = _take(checkpoint, number, item)
            if problem == "footer":
                footer, footer_line = item, number
            elif problem:
                self.damaged(checkpoint, number, problem)
        if footer is None:
            self.damaged(checkpoint, None, f"no footer after line {number}: the file is incomplete")
            return
        found = {
            "keys": len(checkpoint.data),
            "sessions": len(checkpoint.sessions),
            "versions": len(checkpoint.versions),
            "tombstones": len(checkpoint.tombstones),
            "lines": footer_line,
        }
        wrong = [
            f"{n} {k} (the footer: {footer.get(k)})" for k, n in found.items() if footer.get(k) != n
        ]
        if wrong:
            self.damaged(checkpoint, footer_line, "the file holds " + ", ".join(wrong))
        _check_stamps(checkpoint, footer_line, self)


def _why(line: bytes, text: bytes | None) -> str:
    if text is None:
        if is_sealed_shape(line):
            return "its checksum does not match its contents"
        return "a line without its checksum"
    return "neither entries, sessions, versions, tombstones nor the footer"


def _take(checkpoint: Checkpoint, number: int, item: dict[str, Any]) -> str | None:
    """Adds a block line's items; a problem's description, "footer", or None."""
    if item.get("footer") is True:
        return "footer"
    if len(item) != 1:
        return "a line holds one block"
    kind, block = next(iter(item.items()))
    if kind == "entries":
        if type(block) is not dict:
            return "entries must be an object of keys and values"
        checkpoint.data.update(block)
        return None
    if type(block) is not list:
        return f"{kind} must be a list"
    if kind == "sessions":
        checkpoint.sessions.extend((number, row) for row in block)
    elif kind in ("versions", "tombstones"):
        stamps = checkpoint.versions if kind == "versions" else checkpoint.tombstones
        for stamp in block:
            if not _is_stamp(stamp):
                return f"a {kind[:-1]} must be [key, number, client]"
            stamps[stamp[0]] = (stamp[1], stamp[2])
    else:
        return f"unknown block {kind!r}"
    return None


def _is_stamp(stamp: Any) -> bool:
    return (
        type(stamp) is list
        and len(stamp) == 3
        and type(stamp[0]) is str
        and type(stamp[1]) is int
        and type(stamp[2]) is str
    )


def _check_stamps(checkpoint: Checkpoint, line: int | None, reader: _Reader | None) -> None:
    """A version belongs to a key the file holds, a tombstone to one it does not."""
    data = checkpoint.data
    for key in [k for k in checkpoint.versions if k not in data]:
        del checkpoint.versions[key]
        if reader is None:
            raise RecoveryError(checkpoint.path, line, f"a version for a missing key: {key!r}")
        reader.damaged(checkpoint, line, f"a version for a key the file does not hold: {key!r}")
    for key in [k for k in checkpoint.tombstones if k in data]:
        del checkpoint.tombstones[key]
        if reader is None:
            raise RecoveryError(checkpoint.path, line, f"a tombstone for a present key: {key!r}")
        reader.damaged(checkpoint, line, f"a tombstone for a key the file holds: {key!r}")


def _loads(text: bytes | None) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


# ---- format 1 (read only) ---------------------------------------------------------


def _read_format1(path: Path, first: bytes, lines: Iterator[bytes]) -> Checkpoint:
    """The previous version's checkpoint: one item per line, no checksums."""
    header = _loads(first)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise RecoveryError(path, 1, f"not a {FORMAT} header", repairable=True)
    if header.get("version") != 1:
        raise RecoveryError(path, 1, f"unsupported checkpoint version {header.get('version')!r}")
    applied = header.get("applied")
    if not isinstance(applied, dict) or not all(
        type(n) is int and n >= 0 for n in applied.values()
    ):
        raise RecoveryError(path, 1, "'applied' must map origins to log sequence numbers")
    checkpoint = Checkpoint(path, 1, applied, logs=1)
    data, footer, footer_line = checkpoint.data, None, None
    for number, line in enumerate(lines, 2):
        item = _loads(line)
        if footer is not None:
            raise RecoveryError(path, number, "data after the footer")
        if type(item) is list and len(item) == 2 and type(item[0]) is str:
            data[item[0]] = item[1]
        elif type(item) is dict and "client" in item:
            checkpoint.sessions.append((number, item))
        elif type(item) is dict and len(item) == 1 and ("version" in item or "tombstone" in item):
            kind, stamp = next(iter(item.items()))
            if not _is_stamp(stamp):
                raise RecoveryError(path, number, f"a {kind} must be [key, number, client]")
            stamps = checkpoint.versions if kind == "version" else checkpoint.tombstones
            stamps[stamp[0]] = (stamp[1], stamp[2])
        elif type(item) is dict and item.get("footer") is True:
            footer, footer_line = item, number
        else:
            raise RecoveryError(path, number, "not an entry, a session, a version or the footer")
    if footer is None:
        raise RecoveryError(path, None, "no footer: the file is incomplete")
    counts = {
        "keys": len(data),
        "sessions": len(checkpoint.sessions),
        "versions": len(checkpoint.versions),
        "tombstones": len(checkpoint.tombstones),
    }
    for name, count in counts.items():
        if footer.get(name, 0 if name in ("versions", "tombstones") else None) != count:
            raise RecoveryError(path, footer_line, f"the footer's {name} count is not {count}")
    _check_stamps(checkpoint, footer_line, None)
    return checkpoint
