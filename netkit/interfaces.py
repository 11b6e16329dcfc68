"""The addresses a client can reach a listening socket at, from local information only.

A server bound to every interface (``0.0.0.0``, ``::``) is not reachable at that
address: what a client can use is the host's name or one of its interfaces'
addresses. Both come from this machine alone (``gethostname()`` and the interface
table through psutil, i.e. ``getifaddrs()``), never from DNS, which can hang.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import psutil

MAX_ADDRESSES = 16  # a host with dozens of bridges still gets a line a person can read
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def host_port(host: str, port: int) -> str:
    """``host:port``, ``[v6]:port`` for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reachable_addresses(listener: socket.socket) -> list[str]:
    """``host:port`` texts a client can connect to, for a bound TCP ``listener``.

    Bound to one address: that address. Bound to every interface: the host's name,
    then the addresses of the interfaces in the listener's families: global ones
    before loopback, IPv4 before IPv6; link-local ones are left out (useless
    without a scope). At most ``MAX_ADDRESSES``.
    """
    host, port = listener.getsockname()[:2]
    host = host.removeprefix("::ffff:")  # an IPv4 address in a dual-stack socket
    if host not in ("0.0.0.0", "::"):
        return [host_port(host, port)]
    found = [host_port(address, port) for address in _interface_addresses(_families(listener))]
    name = host_name()
    named = [f"{name}:{port}"] if name else []
    return list(dict.fromkeys(named + found))[:MAX_ADDRESSES] or [host_port(host, port)]


def host_name() -> str | None:
    """This host's name as other machines may know it; None if it has none worth giving."""
    name = socket.gethostname()
    return name if _HOST_NAME.fullmatch(name) and name != "localhost" else None


def network_address(sock: socket.socket) -> str | None:
    """The address at which other machines reach this host through ``sock`` (bound),
    or None when ``sock`` serves this machine only.

    Bound to one address: that address, unless it is a loopback one. Bound to every
    interface: the first global address of the socket's families (IPv4 first), or
    None if the host has no address but loopback ones.
    """
    host = sock.getsockname()[0].removeprefix("::ffff:").split("%", 1)[0]
    if host not in ("0.0.0.0", "::"):
        try:
            return None if ipaddress.ip_address(host).is_loopback else host
        except ValueError:
            return None
    found = _interface_addresses(_families(sock))
    return next((a for a in found if not ipaddress.ip_address(a).is_loopback), None)


def _families(sock: socket.socket) -> set[int]:
    families = {sock.family}
    if sock.family == socket.AF_INET6 and not sock.getsockopt(
        socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
    ):
        families.add(socket.AF_INET)  # dual stack
    return families


def _interface_addresses(families: set[int]) -> list[str]:
    try:
        interfaces = psutil.net_if_addrs()
    except (OSError, psutil.Error):  # no interface table to read: the name must do
        return []
    addresses = []
    for entries in interfaces.values():
        for entry in entries:
            if entry.family not in families:
                continue
            try:
                address = ipaddress.ip_address(entry.address.split("%", 1)[0])
            except ValueError:
                continue
            if not address.is_link_local and not address.is_unspecified:
                addresses.append(address)
    addresses.sort(key=lambda a: (a.is_loopback, a.version, int(a)))
    return [str(a) for a in addresses]
