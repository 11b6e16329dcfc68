"""Listening sockets, socket addresses for people, and the open-file limit.

Every server opens its listener here, so that "every interface" means the same
thing everywhere: IPv6 and IPv4 on one dual-stack socket where the system can,
so that a client resolving ``localhost`` to ``::1`` reaches a server as surely as
one using 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import resource
import socket
from typing import Any

log = logging.getLogger("netkit.listeners")

ALL_INTERFACES = ""
DEFAULT_BACKLOG = 1024
# Descriptors a server keeps for itself (files, announcements, logging) when it
# sizes its connection cap from the open-file limit.
RESERVED_FDS = 64


def open_listener(host: str | None, port: int, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A non-blocking listening TCP socket; port 0 picks a free one.

    ``host`` None, ``""`` or ``"::"`` means every interface. Raises ``OSError`` (address
    in use, unknown host) with the address in its message.
    """
    try:
        if host in (None, ALL_INTERFACES, "::") and socket.has_dualstack_ipv6():
            sock = socket.create_server(
                ("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
            )
        else:
            family, _, _, _, address = socket.getaddrinfo(
                host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.create_server(address, family=family, backlog=backlog)
    except OSError as exc:
        where = format_address((host or "*", port))
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def open_datagram_socket(host: str, port: int, receive_buffer: int | None = None) -> socket.socket:
    """A bound, non-blocking UDP socket. Raises ``OSError`` naming the address."""
    sock = None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        where = format_address((host, port))
        raise OSError(exc.errno, f"cannot listen on {where} (UDP): {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) names this machine's loopback only."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(address: Any) -> str:
    """The host part of a socket address, IPv4-mapped IPv6 shown as plain IPv4."""
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    return host.removeprefix("::ffff:")


def format_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a socket address, for people.

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are shown as plain IPv4.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def raise_open_file_limit(wanted: int | None = None) -> int:
    """Raises the soft limit on open files (to ``wanted``, else as far as the hard
    limit allows); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = max(soft, 1 << 20) if hard == resource.RLIM_INFINITY else hard
    target = ceiling if wanted is None else min(wanted, ceiling)
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d: %s", soft, exc)
    return soft


def connection_capacity(requested: int, open_file_limit: int, *, explicit: bool = False) -> int:
    """The connection cap: ``requested``, at most what the open-file limit allows.

    ``explicit``: the user asked for that number, so a cut is worth a warning.
    """
    # Files, listeners and links need some; under a small limit, a quarter of it.
    allowed = max(1, open_file_limit - min(RESERVED_FDS, open_file_limit // 4))
    if requested <= allowed:
        return requested
    if explicit:
        log.warning(
            "%d connections is more than the open file limit allows; using %d", requested, allowed
        )
    else:
        log.info("at most %d connections: the open file limit is %d", allowed, open_file_limit)
    return allowed


def shut_down_writing(sock: socket.socket) -> None:
    """Half-closes: the peer reads everything sent so far, then EOF."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
