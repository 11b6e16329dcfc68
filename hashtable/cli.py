"""``hashtable-cli``: talk to a hash table server by hand, as ``redis-cli`` does for Redis.

    hashtable-cli PROJECT                  found through the catalog, authenticated
    hashtable-cli --at 127.0.0.1:41235     one server, by address
    hashtable-cli PROJECT lookup zebra     one request, then exit

Type requests one a line, in either form:

    insert zebra {"weight": 100}           METHOD and its arguments; a value or
    lookup zebra                           subvalue (the rest of the line) is JSON
    lookup "a key with spaces"             if it parses as JSON, else a string;
    scan ^z                                a key may be a quoted JSON string
    query weight 100
    size
    {"method": "remove", "key": "zebra"}   or a request object of the wire protocol

Each reply is printed as the server's JSON reply line. The connection is mutual
TLS with the shared secret (``--secret-file``), or plain with ``--no-auth`` for
a server started with ``--no-auth``; failures are retried as the library does.
Mutations are numbered (exactly-once) in both forms.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import orjson

from hashtable.errors import AuthenticationError, ServiceUnavailable
from hashtable.numbering import Numbering
from hashtable.protocol import encode_reply
from hashtable.request import REQUIRED, Request
from hashtable.transport import DEFAULT_TIMEOUT, Transport
from netkit.addresses import AddressError, parse_address
from netkit.cliargs import positive_seconds, program_name
from netkit.logs import setup_logging
from netkit.security import SecretError, load_secret

PROMPT = "hashtable> "


class Usage(ValueError):
    """A line that is not a request; the message says how to write one."""


def parse_line(line: str) -> Request:
    """A typed line -> its ``Request``. Raises ``Usage``."""
    text = line.strip()
    if not text:
        raise Usage("empty line")
    if text.startswith("{"):
        try:
            fields = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise Usage(f"not a JSON object: {exc}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("method"), str):
            raise Usage('a request object needs a "method"')
        method = fields.pop("method")
        names = REQUIRED.get(method)
        if names is None or set(fields) - set(names):
            raise Usage(f"{method}: takes {', '.join(names) if names else 'no such method'}")
        return Request(method, **fields)
    method, _, rest = text.partition(" ")
    method = method.lower()
    names = REQUIRED.get(method)
    if names is None:
        raise Usage(f"unknown method {method!r}; methods: {', '.join(REQUIRED)}")
    values: dict[str, Any] = {}
    for n, name in enumerate(names):
        rest = rest.strip()
        if n == len(names) - 1 and name in ("value", "subvalue"):
            word, rest = rest, ""  # the rest of the line: JSON may hold spaces
        else:
            word, rest = _word(rest)
        if not word:
            raise Usage(f"usage: {method} {' '.join(n.upper() for n in names)}")
        values[name] = _json_or_text(word) if name in ("value", "subvalue") else _unquoted(word)
    if rest.strip():
        raise Usage(f"usage: {method} {' '.join(n.upper() for n in names)}".rstrip())
    return Request(method, **values)


def _word(text: str) -> tuple[str, str]:
    """The first word of ``text`` (a JSON string if it starts with a quote) and the rest."""
    if text.startswith('"'):
        end = 1
        while end < len(text) and (text[end] != '"' or text[end - 1] == "\\"):
            end += 1
        return text[: end + 1], text[end + 1 :]
    word, _, rest = text.partition(" ")
    return word, rest


def _unquoted(word: str) -> str:
    if word.startswith('"'):
        try:
            value = orjson.loads(word)
        except orjson.JSONDecodeError:
            raise Usage(f"not a quoted string: {word}") from None
        if isinstance(value, str):
            return value
    return word


def _json_or_text(word: str) -> Any:
    try:
        return orjson.loads(word)
    except orjson.JSONDecodeError:
        return word


class Session:
    """A transport and the exactly-once numbering, sending one typed request at a time."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.numbering = Numbering()

    def run(self, request: Request) -> bytes:
        """The server's reply line to ``request``."""
        while True:
            outcome = self.numbering.answered(
                request, self.transport.call(self.numbering.encode(request))
            )
            if outcome is not None:  # None: sent again under a new session
                return encode_reply(outcome)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m hashtable.cli"),
        description="Type requests to a hash table server and see its replies.",
    )
    parser.add_argument("project", nargs="?", help="the project, found through the catalog")
    parser.add_argument("request", nargs="*", help="one request to send, then exit")
    parser.add_argument("--at", metavar="HOST:PORT", help="one server, by address (no catalog)")
    parser.add_argument("--catalog", metavar="HOST[:PORT],...", help="default: $CATALOG_HOST")
    parser.add_argument(
        "--secret-file", type=Path, metavar="FILE", help="default: ~/.config/dht/secret"
    )
    parser.add_argument("--no-auth", action="store_true", help="plain text, for a --no-auth server")
    parser.add_argument("--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(quiet=True)
    if (args.project is None) == (args.at is None):
        if args.at is None:
            parser.error("give a PROJECT, or --at HOST:PORT")
        args.request = [args.project, *args.request]  # with --at, every word is the request
        args.project = None
    if args.no_auth and args.secret_file is not None:
        parser.error("--no-auth and --secret-file contradict each other")
    try:
        address = parse_address(args.at, 0) if args.at else None
        secret = None if args.no_auth else load_secret(args.secret_file)
        transport = Transport(
            args.project, address=address, catalog=args.catalog, timeout=args.timeout, secret=secret
        )
    except (AddressError, SecretError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    session = Session(transport)
    try:
        if args.request:
            return _one(session, " ".join(args.request), parser.prog)
        return _interactive(session, parser.prog)
    except (AuthenticationError, ServiceUnavailable) as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    except KeyboardInterrupt:
        return 130
    finally:
        transport.disconnect()


def _one(session: Session, line: str, prog: str) -> int:
    try:
        request = parse_line(line)
    except Usage as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    reply = session.run(request)
    sys.stdout.buffer.write(reply)
    return 0 if orjson.loads(reply)["status"] == "ok" else 1


def _interactive(session: Session, prog: str) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    while True:
        try:
            line = input(PROMPT) if interactive else sys.stdin.readline()
        except EOFError:
            return 0
        if not interactive and not line:
            return 0
        if not line.strip():
            continue
        try:
            request = parse_line(line)
        except Usage as exc:
            print(f"({exc})", file=sys.stderr if not interactive else sys.stdout, flush=True)
            continue
        sys.stdout.buffer.write(session.run(request))
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
