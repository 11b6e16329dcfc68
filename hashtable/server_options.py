"""The hash table server's command line: its options, their defaults (from the
code that uses them) and the checks between them (``HashTableServer.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from catalog.client import ANNOUNCE_INTERVAL, catalog_addresses
from hashtable.database import (
    DEFAULT_COMPACT_AFTER,
    DEFAULT_SCAN_TIMEOUT,
    DEFAULT_SYNC,
    DEFAULT_VERSION_WINDOW,
    SYNC_MODES,
)
from hashtable.names import project_problem
from hashtable.server import DEFAULT_SUMMARY_INTERVAL, Limits
from netkit.addresses import AddressError
from netkit.cliargs import (
    byte_size,
    int_between,
    nonempty_path,
    nonnegative_seconds,
    port_number,
    positive_int,
    positive_seconds,
    program_name,
)
from netkit.listeners import is_loopback
from netkit.memory import memory_available

# The most --max-request-bytes may be (256 MiB): a line is buffered whole before it
# is parsed, so the bound is what keeps one client from taking all the memory.
MAX_REQUEST_BYTES = 256 * 1024 * 1024
# The most --max-request-values may be: 8 million values take seconds to parse.
MAX_REQUEST_VALUES_CAP = 10_000_000
# --max-memory's default, as a share of the memory the process may use (the
# machine's, or its control group's): room for a compaction's copy-on-write child.
DEFAULT_MEMORY_SHARE = 0.5


def default_data_dir(project: str) -> Path | None:
    """Per user and project, wherever the server is started from:
    ``$XDG_STATE_HOME/hashtable/PROJECT`` (``~/.local/state/hashtable/PROJECT``);
    None when there is no home folder to put it in."""
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG rule: a relative XDG_STATE_HOME is ignored
        # "~" itself when there is no home to be found; an empty HOME would give "/".
        home = os.path.expanduser("~") if os.environ.get("HOME") != "" else ""
        # A HOME that does not exist (HOME=/nonexistent, as daemons get) is no home
        # folder either: the table would go to a tree made up under it.
        if not os.path.isabs(home) or not os.path.isdir(home):
            return None
        state = os.path.join(home, ".local", "state")
    return Path(state) / "hashtable" / project


def memory_size(text: str) -> int:
    """--max-memory: a size (``byte_size``), or a share of the memory the process
    may use (``50%``); 0 is no limit."""
    if not text.endswith("%"):
        return byte_size(text)
    available = memory_available()
    try:
        share = float(text[:-1])
    except ValueError:
        share = -1.0
    if not 0 < share <= 100:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a share of memory (more than 0%, at most 100%)"
        )
    if available is None:
        raise argparse.ArgumentTypeError(
            f"{text}: this system does not say how much memory there is; give a size"
        )
    return int(available * share / 100)


def _project(text: str) -> str:
    problem = project_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("HashTableServer.py"),
        description="Serve a durable hash table and announce it to the catalog.",
    )
    parser.add_argument("project", type=_project, help="the name clients look the server up by")
    _storage_options(parser)
    _network_options(parser)
    _limit_options(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log every request")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    _check_options(parser, args)
    return args


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=nonempty_path,
        help="where table.ckpt and table.txn live (default: "
        "$XDG_STATE_HOME/hashtable/PROJECT, i.e. ~/.local/state/hashtable/PROJECT)",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="start even though the data directory is damaged: keep everything intact up "
        "to the damage, keep the damaged files in DATA_DIR/repaired/, and log exactly what "
        "was dropped (docs/storage.md, Repair)",
    )
    parser.add_argument(
        "--sync",
        choices=SYNC_MODES,
        default=DEFAULT_SYNC,
        help="always: a write is on disk before it is acknowledged, one fsync per "
        "loop turn shared by all clients; everysec: fsync once a second, a crash may lose "
        "the last second; no: leave it to the operating system (default %(default)s)",
    )
    parser.add_argument(
        "--compact-after",
        type=positive_int,
        default=DEFAULT_COMPACT_AFTER,
        metavar="N",
        help="log entries before the log is folded into a new checkpoint (default %(default)s)",
    )
    parser.add_argument(
        "--version-window",
        type=positive_seconds,
        default=DEFAULT_VERSION_WINDOW,
        metavar="SECONDS",
        help="versioned writes (the cluster's): versions more than this far from the "
        "server's clock are refused, and a removed key's tombstone is kept this long "
        "(default %(default)g)",
    )


def _network_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: every interface; with --no-auth, 127.0.0.1)",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="the shared secret clients must prove they hold (default: $DHT_SECRET_FILE, else "
        "~/.config/dht/secret, created if missing; see docs/security.md)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="serve plain text without authentication, for nc and the course's plain clients; "
        "only on loopback (refused with any other --host)",
    )
    parser.add_argument(
        "--port", type=port_number, default=0, help="TCP port (default 0: any free one)"
    )
    parser.add_argument(
        "--catalog",
        metavar="HOST[:PORT],...",
        help="catalogs to announce to (default: $CATALOG_HOST, else localhost:9097)",
    )
    parser.add_argument(
        "--takeover",
        action="store_true",
        help="start even if another server of the project answers, replacing it: it stops at "
        "its next announcement (without this, such a server is refused)",
    )
    parser.add_argument(
        "--announce-interval",
        type=nonnegative_seconds,
        default=ANNOUNCE_INTERVAL,
        metavar="SECONDS",
        help="how often to announce to the catalog (default %(default)g): a catalog that was down "
        "when the server started lists it at the next announcement",
    )


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-memory",
        type=memory_size,
        metavar="SIZE",
        help="refuse inserts while the server holds more memory than this (resident size: "
        "512M, 2G, 25%% of the machine's; 0: no limit; default "
        f"{DEFAULT_MEMORY_SHARE * 100:.0f}%% of the machine's or its control group's); "
        "lookups, removes and scans go on",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        metavar="N",
        help=f"clients connected at once (default {Limits.max_connections}, less if the open "
        "file limit is lower)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int_between(1, MAX_REQUEST_BYTES),
        default=Limits.max_request_bytes,
        metavar="N",
        help=f"longest request line in bytes (default %(default)s, at most {MAX_REQUEST_BYTES})",
    )
    parser.add_argument(
        "--max-request-values",
        type=int_between(1, MAX_REQUEST_VALUES_CAP),
        default=Limits.max_request_values,
        metavar="N",
        help="JSON values in one request, at most (default %(default)s: parsing takes about "
        f"30 ms at worst, with nobody else served; at most {MAX_REQUEST_VALUES_CAP})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=nonnegative_seconds,
        default=Limits.idle_timeout,
        metavar="SECONDS",
        help="close connections idle this long (default %(default)g; 0: never)",
    )
    parser.add_argument(
        "--scan-timeout",
        type=nonnegative_seconds,
        default=DEFAULT_SCAN_TIMEOUT,
        metavar="SECONDS",
        help="time one scan may take over the whole table (default %(default)g)",
    )
    parser.add_argument(
        "--max-scans",
        type=positive_int,
        default=Limits.max_scans,
        metavar="N",
        help="scans, queries and censuses running at once (default %(default)s); each may "
        "hold a snapshot of the table (16 bytes per key), more wait for one to end",
    )
    parser.add_argument(
        "--summary-interval",
        type=nonnegative_seconds,
        default=DEFAULT_SUMMARY_INTERVAL,
        metavar="SECONDS",
        help="how often to log who was served (default %(default)g)",
    )


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check alone; fills in the defaults that depend on others."""
    try:
        args.catalogs = catalog_addresses(args.catalog)
    except AddressError as exc:
        parser.error(f"{'--catalog' if args.catalog is not None else 'CATALOG_HOST'}: {exc}")
    if args.summary_interval <= 0 or args.scan_timeout <= 0 or args.announce_interval <= 0:
        parser.error(
            "--summary-interval, --scan-timeout and --announce-interval must be more than 0"
        )
    if args.no_auth:
        if args.secret_file is not None:
            parser.error("--no-auth and --secret-file contradict each other")
        if args.host is None:
            args.host = "127.0.0.1"
        elif not is_loopback(args.host):
            parser.error(
                f"--no-auth serves anyone who can connect, so only on loopback, not on {args.host!r}"
            )
    if args.max_memory is None:
        available = memory_available()
        args.max_memory = int(available * DEFAULT_MEMORY_SHARE) if available else 0
    args.data_dir = args.data_dir or default_data_dir(args.project)
    if args.data_dir is None:
        parser.error("no home folder to keep the table in: give --data-dir (or set HOME)")
