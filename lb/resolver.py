"""The client: resolves a file of host names through an LS.

``python -m lb.client LS_HOST LS_PORT [-i PROJ2-HNS.txt] [-o RESOLVED.txt]``

All the names go out at once (no lockstep: the LS works on them together),
while the answers are read as they come; the LS answers in the order of the
queries, so answer ``i`` belongs to name ``i``. When every answer is in, the
client writes them, one a line, in input order. Nothing is written if the LS
goes away or stops answering before then.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import socket
import sys
import tempfile
from pathlib import Path

from lb.cli import add_logging_options, assignment_file
from lb.protocol import (
    INVALID,
    MAX_ANSWER_LINE,
    MAX_NAME,
    TIMED_OUT,
    answers_query,
    file_lines,
    invalid_answer,
    name_problem,
    query_name,
    shown,
)
from netkit.cliargs import port_number, positive_seconds
from netkit.connection import Closed, Connection, EndOfInput
from netkit.files import replacement_mode
from netkit.framing import LineTooLong
from netkit.logs import setup_logging

log = logging.getLogger("lb.client")

NAMES_FILE = "PROJ2-HNS.txt"
RESOLVED_FILE = "RESOLVED.txt"
STDIO = "-"
CONNECT_TIMEOUT = 5.0
# The LS answers every query within its time-out (5 s by default); this much
# silence means it is stuck or gone.
DEFAULT_WAIT = 60.0
# After the last answer, how long to wait for the LS to close (and show any extra line).
EXTRA_WAIT = 1.0


class ResolveError(Exception):
    """The LS could not be reached or did not answer every query."""


def read_names(data: bytes) -> list[bytes]:
    """The host names of a names file: one a line, blank lines skipped, a UTF-8
    byte-order mark ignored."""
    return [name for name in map(query_name, file_lines(data)) if name is not None]


def local_answer(name: bytes) -> bytes | None:
    """The answer to ``name`` that needs no LS, or None when the LS must be asked.

    A name over ``MAX_NAME`` bytes is in no table, and a line longer than the
    LS's line bound would make it end the connection, losing every later answer;
    so the client answers it itself, with the very line the LS gives such a name."""
    if len(name) > MAX_NAME:
        return invalid_answer(name, name_problem(name) or "")
    return None


def resolve(host: str, port: int, names: list[bytes], wait: float = DEFAULT_WAIT) -> list[bytes]:
    """Asks the LS at ``host:port`` for every name; returns the answers in order.

    Names that ``local_answer`` answers are not sent. Raises ``ResolveError`` if
    the LS cannot be reached, closes early, is silent for ``wait`` seconds, or
    answers something else than was asked: answer ``i`` must be about name ``i``,
    and there must be one answer per name sent.
    """
    answers = [local_answer(name) for name in names]
    asked = [number for number, answer in enumerate(answers) if answer is None]
    if not asked:
        return [answer for answer in answers if answer is not None]
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise ResolveError(
            f"cannot connect to the LS at {host}:{port}: {exc.strerror or exc}"
        ) from None
    conn = Connection(sock, f"{host}:{port}", max_line=MAX_ANSWER_LINE)
    with sock:
        received = _exchange(sock, conn, [names[number] for number in asked], wait)
    for number, answer in zip(asked, received, strict=True):
        if not answers_query(answer, names[number]):
            raise ResolveError(
                f"answer {number + 1} is not about the name asked: asked for "
                f"{shown(names[number]).decode()}, the LS answered {shown(answer).decode()}"
            )
        answers[number] = answer
    return [answer for answer in answers if answer is not None]


def _exchange(
    sock: socket.socket, conn: Connection, names: list[bytes], wait: float
) -> list[bytes]:
    """Sends the names, half-closes, and reads answers until the LS closes; after
    the last expected answer it waits at most ``EXTRA_WAIT`` for the close, so an
    LS that keeps the connection open costs little and extra lines are seen."""
    answers: list[bytes] = []
    expected = len(names)
    with selectors.DefaultSelector() as selector:
        try:
            conn.send(b"".join(name + b"\n" for name in names))
            selector.register(sock, selectors.EVENT_READ)
            finished_sending = False
            while True:
                if not finished_sending and not conn.wants_write:
                    # Half-close: the LS sees EOF, answers what it has, and closes.
                    sock.shutdown(socket.SHUT_WR)
                    finished_sending = True
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.wants_write else 0)
                selector.modify(sock, events)
                ready = selector.select(EXTRA_WAIT if len(answers) >= expected else wait)
                if not ready:
                    if len(answers) >= expected:
                        break
                    raise ResolveError(
                        f"the LS sent nothing for {wait:g} s "
                        f"({len(answers)} of {expected} answers received)"
                    )
                for _, mask in ready:
                    if mask & selectors.EVENT_WRITE:
                        conn.flush()
                    if mask & selectors.EVENT_READ:
                        answers.extend(conn.read_lines())
        except EndOfInput as eof:
            if eof.rest:
                answers.append(eof.rest)
        except (Closed, OSError) as exc:
            raise ResolveError(
                f"connection to the LS lost after {len(answers)} of {expected} answers: {exc}"
            ) from None
        except LineTooLong as exc:
            raise ResolveError(f"the LS sent an answer line too long ({exc})") from None
    if len(answers) != expected:
        raise ResolveError(f"the LS sent {len(answers)} answers for {expected} names")
    return answers


def write_lines(path: str, lines: list[bytes]) -> None:
    """Writes the lines to ``path`` (or standard output for ``-``); a file is
    replaced whole, so a reader never sees half of it, and keeps the mode it had
    (a new one gets the umask's, as a plain ``open()`` would give it)."""
    data = b"".join(line + b"\n" for line in lines)
    if path == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(path)
    mode = replacement_mode(target)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # else mkstemp's 0600 would be the answers' mode
            out.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Resolves a file of host names through an LS.")
    parser.add_argument("host", help="the LS's host name or address")
    parser.add_argument("port", type=port_number, help="the LS's port")
    parser.add_argument(
        "-i",
        "--input",
        help=f"host names, one a line, '-' for standard input (default: {NAMES_FILE} here, "
        "else the shipped sample)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default=RESOLVED_FILE,
        help="where the answers go, '-' for standard output (default: %(default)s)",
    )
    parser.add_argument(
        "--wait",
        type=positive_seconds,
        default=DEFAULT_WAIT,
        help="give up when the LS is silent this many seconds (default %(default)g)",
    )
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.port:
        parser.error("port 0 cannot be connected to")
    setup_logging(args.verbose, args.quiet)
    source = args.input or str(assignment_file(NAMES_FILE))
    try:
        data = sys.stdin.buffer.read() if source == STDIO else Path(source).read_bytes()
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: cannot read {source}: {exc.strerror or exc}\n")
    names = read_names(data)
    try:
        answers = resolve(args.host, args.port, names, args.wait)
    except ResolveError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    try:
        write_lines(args.output, answers)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: cannot write {args.output}: {exc.strerror or exc}\n")
    timed_out = sum(answer.endswith(TIMED_OUT) for answer in answers)
    invalid = sum(INVALID in answer for answer in answers)
    log.info(
        "%d names: %d resolved, %d timed out, %d invalid; answers in %s",
        len(names),
        len(answers) - timed_out - invalid,
        timed_out,
        invalid,
        args.output,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
