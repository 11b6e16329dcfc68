"""The herd's configuration: its servers, their addresses, and the links between them.

JSON (or TOML, by the file's ``.toml`` suffix) of this shape::

    {"herd": "herd",
     "servers": {"Goloman": {"host": "127.0.0.1", "port": 12570, "peer_port": 12571}, ...},
     "links": [["Goloman", "Hands"], ...]}

``port`` is where clients connect, ``peer_port`` where neighbours do (default
``port + 1``). With catalog discovery a server's ``host`` and ports may be left
out: it listens where it is told and its neighbours look it up in the catalog.
The shipped default (``herd/default.json``) is the assignment's five servers
and six links.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from herd.messages import SERVER_NAME

DEFAULT_CONFIG = Path(__file__).with_name("default.json")
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what and where."""


@dataclass(frozen=True, slots=True)
class ServerAddress:
    name: str
    host: str | None
    port: int | None
    peer_port: int | None


@dataclass(frozen=True, slots=True)
class HerdConfig:
    herd: str
    servers: dict[str, ServerAddress]
    links: frozenset[frozenset[str]]

    def neighbours(self, name: str) -> list[str]:
        return sorted(other for link in self.links if name in link for other in link - {name})


def load_config(path: Path | None = None) -> HerdConfig:
    """Reads and checks a configuration file (the shipped default when ``path`` is None)."""
    path = path or DEFAULT_CONFIG
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror or error}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = tomllib.loads(data.decode()) if path.suffix == ".toml" else orjson.loads(data)
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {error}"
        ) from None
    try:
        return parse_config(document)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def parse_config(document: Any) -> HerdConfig:
    if not isinstance(document, dict):
        raise ConfigError("the configuration must be an object with 'servers' and 'links'")
    unknown = set(document) - {"herd", "servers", "links"}
    if unknown:
        raise ConfigError(f"unknown keys {sorted(unknown)}")
    herd = document.get("herd", "herd")
    if not isinstance(herd, str) or not SERVER_NAME.fullmatch(herd):
        raise ConfigError("'herd' must be a name of letters, digits, '.', '_' and '-'")
    servers_doc = document.get("servers")
    if not isinstance(servers_doc, dict) or not servers_doc:
        raise ConfigError("'servers' must be an object naming at least one server")
    servers = {name: _server(name, entry) for name, entry in servers_doc.items()}
    _check_ports(servers)
    links_doc = document.get("links", [])
    if not isinstance(links_doc, list):
        raise ConfigError("'links' must be a list of [name, name] pairs")
    links = set()
    for item in links_doc:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and all(type(n) is str and n in servers for n in item)
        ):
            raise ConfigError(f"link {item!r:.80} is not a pair of configured server names")
        if item[0] == item[1]:
            raise ConfigError(f"link {item!r} joins a server to itself")
        links.add(frozenset(item))
    return HerdConfig(herd, servers, frozenset(links))


def _server(name: Any, entry: Any) -> ServerAddress:
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name):
        raise ConfigError(
            f"server name {name!r:.80} must be up to 64 letters, digits, '.', '_' and '-'"
        )
    if not isinstance(entry, dict) or set(entry) - {"host", "port", "peer_port"}:
        raise ConfigError(f"server {name}: expected an object with host, port and peer_port")
    host = entry.get("host")
    if host is not None and (not isinstance(host, str) or not host or len(host) > 255):
        raise ConfigError(f"server {name}: 'host' must be a host name or address")
    port = _port(name, "port", entry.get("port"))
    peer_port = _port(name, "peer_port", entry.get("peer_port"))
    if peer_port is None and port is not None:
        peer_port = port + 1
    return ServerAddress(name, host, port, peer_port)


def _port(name: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 < value < 65535:
        raise ConfigError(f"server {name}: {key!r} must be a port number from 1 to 65534")
    return value


def _check_ports(servers: dict[str, ServerAddress]) -> None:
    taken: dict[tuple[str | None, int], str] = {}
    for server in servers.values():
        for port in (server.port, server.peer_port):
            if port is None:
                continue
            key = (server.host, port)
            if key in taken:
                raise ConfigError(f"{server.name} and {taken[key]} both use port {port}")
            taken[key] = server.name


def write_config(config: HerdConfig, path: Path) -> None:
    """Writes ``config`` as JSON (the tests and herd.local write their own)."""
    document = {
        "herd": config.herd,
        "servers": {
            name: {
                key: value
                for key, value in (("host", s.host), ("port", s.port), ("peer_port", s.peer_port))
                if value is not None
            }
            for name, s in config.servers.items()
        },
        "links": sorted(sorted(link) for link in config.links),
    }
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
