"""Socket chores shared by the TS and the LS event loops."""

from __future__ import annotations

import contextlib
import selectors
import socket
from typing import Any

ALL_INTERFACES = ""


def open_listener(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket; port 0 picks a free one.

    ``""`` listens on every interface, IPv6 too where the system allows, so that a
    peer resolving ``localhost`` to ``::1`` reaches it as well as one using 127.0.0.1.
    Raises ``OSError`` (port in use, bad host).
    """
    if host == ALL_INTERFACES and socket.has_dualstack_ipv6():
        sock = socket.create_server(
            ("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128
        )
    else:
        sock = socket.create_server((host, port), backlog=128)
    sock.setblocking(False)
    return sock


def peer_name(address: Any) -> str:
    """``host:port`` of a socket address, without IPv4-mapped IPv6 clutter."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def set_interest(
    selector: selectors.BaseSelector, sock: socket.socket, events: int, data: Any
) -> None:
    """Registers, modifies or (for no events) unregisters ``sock``, as needed.

    Selectors cannot hold a socket with no events, yet a peer sometimes wants none
    (backpressure with nothing to write), so this keeps the selector in step.
    """
    try:
        key = selector.get_key(sock)
    except KeyError:
        if events:
            selector.register(sock, events, data)
        return
    if not events:
        selector.unregister(sock)
    elif key.events != events or key.data is not data:
        selector.modify(sock, events, data)


def forget(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    """Unregisters ``sock`` if it is registered (before closing it)."""
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(sock)
