"""The hash table server: ``python HashTableServer.py PROJECT``.

Listens on a free TCP port (or --port), announces itself to the catalog as
``{"type": "hashtable", "project": PROJECT, "port": ..., ...}`` at start and every
60 s, and serves the protocol of docs/protocol.md until SIGINT or SIGTERM. Every
acknowledged write is already on disk (with the default --sync always), so
stopping, or a crash, loses nothing: start it again with the same data directory.

One server per project: it refuses to start while another server of the project
(another data directory) answers, unless --takeover (hashtable/singleton.py).

Exit status: 0 when stopped by a signal or replaced (--takeover), 1 when storage
failed (restart to recover), 2 for bad arguments, unusable data, an address that
cannot be bound or another server of the project.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path

from hashtable.database import Database, RecoveryError, StorageFailure
from hashtable.memory_limit import MemoryLimit
from hashtable.server import Limits, Server
from hashtable.server_options import parse_args
from hashtable.singleton import ProjectGuard
from hashtable.storage import REPAIRS
from netkit.interfaces import reachable_addresses
from netkit.listeners import (
    connection_capacity,
    format_address,
    open_listener,
    raise_open_file_limit,
)
from netkit.logs import setup_logging
from netkit.security import Secret, SecretError, load_secret, require_service_name
from netkit.signals import StopSignals

log = logging.getLogger("hashtable.server")


def say_where_it_listens(listener: socket.socket) -> None:
    """The listening line, in one write so that no log line from another thread can
    land inside it. Standard output closed or full is not a reason to stop serving."""
    try:
        sys.stdout.write(f"listening on {' '.join(reachable_addresses(listener))}\n")
        sys.stdout.flush()
    except OSError as exc:
        log.warning("cannot print the listening line: %s", exc.strerror or exc)
        # What is left in the buffer would fail again at exit: send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    # Until the loop runs, a stop signal just ends the process: nothing is
    # acknowledged yet, and recovery is safe to interrupt (crash-only).
    signals = StopSignals()
    secret = None
    if not args.no_auth:
        try:
            secret = load_secret(args.secret_file)
        except SecretError as exc:
            log.critical("%s", exc)
            return 2
    limits = _limits(args)
    database = _open_database(args)
    if database is None:
        return 2
    guard = ProjectGuard(
        args.project, args.data_dir, database.origin, args.catalogs, secret, takeover=args.takeover
    )
    if (refusal := guard.check_at_start()) is not None:
        log.critical("%s", refusal)
        database.close()
        return 2
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        log.critical("%s", exc.strerror or exc)
        database.close()
        return 2
    server = _server(args, database, listener, limits, secret, guard)
    signals.attach(server.stop)
    guard.stop_server = server.stop
    _log_start(args, database, limits, secret)
    # The program's one line of output, --quiet or not: scripts read the port from it
    # (format: docs/protocol.md, "The listening line").
    say_where_it_listens(listener)
    try:
        server.serve()
    except StorageFailure as exc:
        log.critical("storage failed, exiting (start again to recover): %s", exc)
        return 1
    except Exception:
        log.critical("unexpected error, exiting (start again to recover)", exc_info=True)
        return 1
    finally:
        with contextlib.suppress(Exception):
            database.close()
    if guard.exit_status is not None:  # replaced, or refused late (the reason is logged)
        return guard.exit_status
    log.info("stopped by %s", signals.received or "request")
    return 0


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(
        max_request_bytes=args.max_request_bytes,
        max_request_values=args.max_request_values,
        max_connections=connection_capacity(
            args.max_connections or Limits.max_connections,
            raise_open_file_limit(),
            explicit=args.max_connections is not None,
        ),
        idle_timeout=args.idle_timeout or None,
        max_scans=args.max_scans,
    )


def _open_database(args: argparse.Namespace) -> Database | None:
    """Recovers the table; None (the reason logged) when the directory cannot be used."""
    memory_limit = MemoryLimit(args.max_memory) if args.max_memory else None
    try:
        database = Database(
            args.data_dir,
            sync=args.sync,
            compact_after=args.compact_after,
            scan_timeout=args.scan_timeout,
            version_window=args.version_window,
            memory_limit=memory_limit,
            repair=args.repair,
        )
    except RecoveryError as exc:
        log.critical("cannot recover the table in %s: %s", args.data_dir, exc)
        if exc.repairable:
            log.critical(
                "nothing was changed; to start from what is intact, run again with --repair "
                "(it keeps the damaged files in %s and logs what it drops)",
                Path(args.data_dir) / REPAIRS,
            )
    except OSError as exc:
        log.critical("cannot use data directory %s: %s", args.data_dir, exc.strerror or exc)
    else:
        if memory_limit is not None:
            memory_limit.warn_if_over()
        return database
    return None


def _server(
    args: argparse.Namespace,
    database: Database,
    listener: socket.socket,
    limits: Limits,
    secret: Secret | None,
    guard: ProjectGuard,
) -> Server:
    tls = None
    if secret is not None:
        tls = secret.server_context()
        require_service_name(tls, "hashtable", args.project)
    return Server(
        database,
        listener,
        limits=limits,
        announce={
            "project": args.project,
            "sync": args.sync,
            "origin": database.origin,
            **guard.record_fields(),
        },
        catalogs=args.catalogs,
        announce_interval=args.announce_interval,
        summary_interval=args.summary_interval,
        tls=tls,
        sign=secret.sign_record if secret is not None else None,
        before_announce=guard.before_announce,
    )


def _log_start(
    args: argparse.Namespace, database: Database, limits: Limits, secret: Secret | None
) -> None:
    stats = database.stats()
    log.info(
        "project %s: %s keys in %s (sync %s, compacting after %d log entries)",
        args.project,
        stats.get("keys", "?"),
        args.data_dir,
        args.sync,
        args.compact_after,
    )
    log.info(
        "up to %d connections; announcing to %s",
        limits.max_connections,
        ",".join(format_address(c) for c in args.catalogs),
    )
    if secret is None:
        log.warning("authentication is off (--no-auth): anyone on this machine can use the table")
    else:
        log.info("clients must hold the secret %s (%s)", secret.fingerprint, secret.path)


if __name__ == "__main__":
    sys.exit(main())
