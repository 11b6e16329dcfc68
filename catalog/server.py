"""The catalog server: its sockets, its chores and its one event loop.

One thread on the event-loop core (``netkit.loop``), every socket non-blocking. What to do with
the bytes is decided elsewhere (``ingest`` for updates, ``app`` for queries), so
the loop only moves data and enforces the bounds that protect everyone from
one peer:

- UDP P: updates, up to ``UDP_BATCH`` datagrams (or ``UDP_SLICE`` seconds of them)
  per turn so queries are not starved;
- TCP P (HTTP) and P+1 (updates, one per connection, at most ``MAX_UPDATE_BYTES``):
  ``catalog.connections``, with its time-outs and bounds;
- chores at their times: records expiring, updates done waiting for a host name,
  saving the records, the periodic report.

With a state directory, the records each handler accepted are journaled
(``catalog.journal``) before the handler returns, so before any reply can show
them; the periodic save folds the journal.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from catalog.app import CatalogApp
from catalog.connections import MAX_CONNECTIONS, REQUEST_TIMEOUT, Connections
from catalog.ingest import Ingest, Stats
from catalog.journal import FOLD_BYTES, Journal, replay
from catalog.names import Resolver
from catalog.peers import sender_address
from catalog.persist import Saver, StateDir, StateDirError, restore
from catalog.records import DEFAULT_LIFETIME, MAX_RECORDS, RecordStore
from netkit.interfaces import host_name, network_address
from netkit.listeners import (
    RESERVED_FDS,
    connection_capacity,
    open_datagram_socket,
    open_listener,
    raise_open_file_limit,
)
from netkit.loop import READ, EventLoop

log = logging.getLogger("catalog.server")

__all__ = ["MAX_CONNECTIONS", "REQUEST_TIMEOUT", "SAVE_INTERVAL", "CatalogServer", "Config"]

UDP_BATCH = 512
UDP_SLICE = 0.005  # seconds of datagrams per loop turn, at most
LISTEN_BACKLOG = 512
UDP_BUFFER = 8 * 1024 * 1024  # absorbs bursts of datagrams between two loop turns
RECV_SIZE = 64 * 1024
SAVE_INTERVAL = 5.0
SAVE_RETRY = 0.1  # seconds between looks at a save still being written, when another is due
REPORT_INTERVAL = 60.0


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 9097
    lifetime: float = DEFAULT_LIFETIME
    state_dir: Path | None = None  # None: keep nothing on disk
    save_interval: float = SAVE_INTERVAL  # seconds between saves of the state file, at most
    journal_fold_bytes: int = FOLD_BYTES  # a journal this large forces a save
    max_records: int = MAX_RECORDS
    request_timeout: float = REQUEST_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    explicit_max_connections: bool = False  # the user asked: a cut is worth a warning


class CatalogServer:
    """Binds at construction (``OSError`` with a clear message), serves in ``run()``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.state = StateDir(config.state_dir) if config.state_dir else None
        self._sockets: list[socket.socket] = []
        try:
            self.udp = self._keep(open_datagram_socket(config.host, config.port, UDP_BUFFER))
            self.http = self._keep(open_listener(config.host, config.port, LISTEN_BACKLOG))
            self.updates = self._keep(open_listener(config.host, config.port + 1, LISTEN_BACKLOG))
            self.journal = self._open_state()
        except BaseException:
            if self.state:
                self.state.close()
            self._close_sockets()
            raise
        self.store = RecordStore(config.lifetime, config.max_records, clock=clock)
        self.resolver = Resolver()
        public = network_address(self.http)
        self.local_listing = (public, host_name() or public) if public else None
        self.ingest = Ingest(
            self.store,
            self.resolver,
            clock,
            self.local_listing,
            journaling=self.journal is not None,
        )
        self.app = CatalogApp(self.store, f"catalog on {socket.gethostname()}:{config.port}")
        self.loop = EventLoop()
        self.connections = Connections(
            self.loop,
            self.app,
            self._receive_update,
            config.request_timeout,
            connection_capacity(
                config.max_connections,
                raise_open_file_limit(config.max_connections + RESERVED_FDS),
                explicit=config.explicit_max_connections,
            ),
        )
        self._saver: Saver | None = None
        self._saved_version = self.store.version
        self._last_save = -config.save_interval
        self._save_retry = 0.0  # no save before this (loop time): one is being written
        self._displaced = 0  # store.displaced at the last report
        # Chores at exact times: records expiring, updates done waiting for a name, saves.
        self._expiry_alarm = self.loop.alarm(self._purge)
        self._naming_alarm = self.loop.alarm(self._stop_waiting)
        self._save_alarm = self.loop.alarm(self._save)

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    def _open_state(self) -> Journal | None:
        """Locks the state directory and opens a new journal file in it (None: no state)."""
        if self.state is None:
            return None
        self.state.open()
        try:
            return Journal(self.state.path, self.config.journal_fold_bytes)
        except OSError as exc:
            raise StateDirError(
                f"cannot write a journal in {self.state.path}: {exc.strerror or exc}"
            ) from None

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Serves until ``stop()``; then saves the records and releases everything."""
        if self.state and self.journal:
            restore(self.store, self.state)
            replay(self.store, self.journal.earlier)
            self._saver = Saver(self.state)
            # Journals replayed are folded by a save at once.
            self._saved_version = -1 if self.journal.earlier else self.store.version
        host, port = self.config.host, self.config.port
        log.info(
            "catalog listening on %s:%d (UDP updates, HTTP queries) and %s:%d (TCP updates); "
            "lifetime %ss; state in %s",
            host, port, host, port + 1, self.config.lifetime, self.state.path if self.state else "memory only",
        )  # fmt: skip
        if self.local_listing:
            log.info("services on this machine are listed as %s (%s)", *self.local_listing)
        loop = self.loop
        loop.watch(self.udp, self._read_datagrams, READ)
        self.connections.start(self.http, self.updates)
        loop.watch(self.resolver, self._names_arrived, READ)
        loop.call_later(REPORT_INTERVAL, self._report)
        loop.add_turn_hook(self._after_turn)
        try:
            loop.run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Asks ``run()`` to return; safe from a signal handler."""
        self.loop.stop()

    def _after_turn(self) -> None:
        """Re-arms the chores from what the turn changed."""
        self._expiry_alarm.set(self._loop_time(self.store.next_expiry()))
        self._naming_alarm.set(self._loop_time(self.ingest.next_deadline()))
        if self._saver is None or self.journal is None:
            return
        self.journal.folded(self._saver.saved_upto)
        due = None
        if self.store.version != self._saved_version:
            wait = 0.0 if self.journal.wants_fold else self.config.save_interval
            due = max(self._last_save + wait, self._save_retry)
        self._save_alarm.set(due)

    def _loop_time(self, wall: float | None) -> float | None:
        """A deadline on the store's clock (wall time), on the loop's clock."""
        return None if wall is None else self.loop.time() + (wall - self.clock())

    def _purge(self) -> None:
        self.store.purge()

    def _stop_waiting(self) -> None:
        self.ingest.stop_waiting()
        self._journal_accepted()

    def _save(self) -> None:
        """Hands a snapshot to the saver, with the journal files it folds. One save at
        a time: the journal keeps what comes meanwhile, and the disk is not asked to
        write a second copy of the records before the first is done."""
        assert self._saver is not None and self.journal is not None
        if self._saver.busy:
            self._save_retry = self.loop.time() + SAVE_RETRY
            return
        self._journal_accepted()
        folds = self.journal.rotate()
        self._saver.submit(self.store.json_body(), folds)
        self._saved_version, self._last_save = self.store.version, self.loop.time()

    def _shutdown(self) -> None:
        self.connections.close()
        self.loop.close()
        self._close_sockets()
        self.ingest.stop_waiting(force=True)
        if self._saver and self.state and self.journal:
            records = len(self.store)
            self._journal_accepted()  # in case the last save fails
            self.journal.close()
            if self._saver.close(self.store.json_body(), self.journal.number):
                log.info("stopped; saved %d records to %s", records, self.state.file)
            else:
                log.error("stopped, but the records could not be saved to %s", self.state.file)
        if self.journal is not None:
            self.journal.close()
        if self.state:
            self.state.close()
        self.resolver.close()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _report(self) -> None:
        self.loop.call_later(REPORT_INTERVAL, self._report)
        if self.connections.refused:
            log.warning(
                "refused %d connections in the last minute (limit reached, none idle)",
                self.connections.refused,
            )
            self.connections.refused = 0
        stats, self.ingest.stats = self.ingest.stats, Stats()
        displaced, self._displaced = self.store.displaced - self._displaced, self.store.displaced
        if stats.updates or stats.rejected:
            log.info("%s", stats.report(len(self.store), displaced))

    # ------------------------------------------------------------------ updates

    def _journal_accepted(self) -> None:
        """Journals the records accepted since the last call, in one write."""
        if self.journal is not None and self.ingest.accepted:
            self.journal.write(self.ingest.take_accepted())

    def _read_datagrams(self, _events: int) -> None:
        self._take_datagrams()
        self._journal_accepted()

    def _receive_update(self, data: bytes, address: str) -> None:
        """One update that came over TCP."""
        self.ingest.receive(data, address)
        self._journal_accepted()

    def _names_arrived(self, _events: int) -> None:
        self.ingest.names_arrived()
        self._journal_accepted()

    def _take_datagrams(self) -> None:
        """Up to ``UDP_BATCH`` datagrams, or ``UDP_SLICE`` seconds of them: a flood
        waits in the socket's buffer (and overflows it) rather than hold the loop."""
        # The clock is read before every datagram (0.1 µs; one update costs 30 µs or
        # more): looking every 32 let 32 costly ones hold the loop far past the slice.
        deadline = time.perf_counter() + UDP_SLICE
        for _ in range(UDP_BATCH):
            if time.perf_counter() > deadline:
                return
            try:
                data, address = self.udp.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                return
            self.ingest.receive(data, sender_address(address))
