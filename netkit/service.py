"""The life of a listening server on the loop core: accept, run until stopped, release.

Each server (the hash table server, the TS, the LS) is a ``ListeningService``:
it hands its listener to the base, which runs an ``Acceptor`` on the loop
and calls ``on_connection(sock, address)`` for every new connection. ``serve_forever``
runs the loop until ``stop()`` (safe from a signal handler); ``close()`` lets the
server drop its connections (``close_connections``) and then releases the
acceptor, the listener and the loop, in that order.
"""

from __future__ import annotations

import socket
from typing import Any

from netkit.accepting import Acceptor
from netkit.loop import EventLoop


class ListeningService:
    def __init__(self, listener: socket.socket, loop: EventLoop | None = None) -> None:
        self.loop = loop or EventLoop()
        self.listener = listener
        self.acceptor = Acceptor(self.loop, listener, self.on_connection)

    def on_connection(self, sock: socket.socket, address: Any) -> None:
        raise NotImplementedError

    def starting(self) -> None:
        """What to do once, as the loop starts (announcing, linking, watching)."""

    def close_connections(self) -> None:
        """Drops every connection and stops the server's own helpers."""

    def serve_forever(self) -> None:
        """Runs the loop until ``stop()``."""
        self.starting()
        self.loop.run()

    def stop(self) -> None:
        """Ends ``serve_forever`` after the current turn; safe from a signal handler."""
        self.loop.stop()

    def close(self) -> None:
        self.close_connections()
        self.acceptor.close()
        self.listener.close()
        self.loop.close()
