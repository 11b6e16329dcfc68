"""Parsing of ``host[:port]`` addresses and comma-separated lists of them."""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """An address that cannot be parsed; the message says what is wrong."""


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """Parses ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise AddressError(f"bad address {text!r}: expected [host]:port")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""  # a bare IPv6 address, or a host name
    if not host:
        raise AddressError(f"bad address {text!r}: no host")
    if ":" in host:  # only an IPv6 address has colons
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"bad address {text!r}: {host!r} is not an IPv6 address") from None
    if not port_text:
        if text.endswith(":") and (text.count(":") == 1 or text.endswith("]:")):
            raise AddressError(f"bad address {text!r}: empty port")
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise AddressError(f"bad address {text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_address_list(text: str, default_port: int) -> list[tuple[str, int]]:
    """Parses a comma-separated list such as ``CATALOG_HOST``; empty items are skipped."""
    addresses = [parse_address(item, default_port) for item in text.split(",") if item.strip()]
    if not addresses:
        raise AddressError(f"no address in {text!r}")
    return addresses
