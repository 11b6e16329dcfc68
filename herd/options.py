"""The knobs of one herd server: the command line's (herd.cli), with its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Options:
    """The knobs of one server (the command line's, herd.cli)."""

    max_line: int = 4096
    max_clients: int = 1024
    max_locations: int = 1_000_000
    idle_timeout: float = 300.0
    ack_timeout: float = 0.2
    handshake_timeout: float = 5.0
    ping_interval: float = 1.0
    peer_timeout: float = 5.0
    backoff_initial: float = 0.1
    backoff_cap: float = 5.0
    max_pending_peers: int = 64
    log_flush_interval: float = 0.01  # herd.traffic: seconds the traffic log may wait
    server_ssl: Any = None  # ssl.SSLContext for the peer port: netkit.security's
    client_ssl: Any = None
    peer_server_name: str | None = None  # the SNI a link sends (netkit.security.service_name)
