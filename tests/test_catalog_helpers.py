"""Helpers shared by the catalog's process-level tests (no tests in here)."""

from __future__ import annotations

import json
import socket
import time
import zlib
from pathlib import Path

import orjson
import requests

from harness.processes import free_port, python_module, tcp_open, wait_until


class OurCatalog:
    """``python -m catalog`` started with extra options; same shape as conftest's handle."""

    def __init__(self, spawn, state_dir: Path, *options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--state-dir", str(state_dir)]
        self.process = spawn(python_module("catalog", *args, *options), name="catalog")
        wait_until(
            lambda: tcp_open("127.0.0.1", self.port) or not self.process.alive(),
            what="catalog to listen",
        )
        assert self.process.alive(), self.process.output()


def send_udp(port: int, data: bytes | dict) -> None:
    if isinstance(data, dict):
        data = orjson.dumps(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", port))


def send_tcp(port: int, data: bytes | dict, compress: bool = False) -> None:
    """One update over TCP ``port`` (the catalog's P+1): connect, write, close."""
    if isinstance(data, dict):
        data = orjson.dumps(data)
    if compress:
        data = b"\x1a" + zlib.compress(data)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)


def get(catalog, path: str, **kwargs) -> requests.Response:
    return requests.get(catalog.url + path, timeout=5, **kwargs)


def records(catalog) -> list[dict]:
    """``/query.json``, checked to be strict JSON without duplicate keys."""
    response = get(catalog, "/query.json")
    assert response.status_code == 200
    return json.loads(response.text, object_pairs_hook=_no_duplicates)


def _no_duplicates(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def wait_for_records(catalog, condition, what: str = "records", timeout: float = 10.0):
    """Polls ``/query.json`` until ``condition(records)`` holds; returns the records."""
    found: list[dict] = []

    def check():
        found[:] = records(catalog)
        return condition(found)

    wait_until(check, timeout=timeout, what=what)
    return found


def ports(found: list[dict], **fields) -> set:
    return {
        r.get("port") for r in found if all(r.get(key) == value for key, value in fields.items())
    }


def fill(catalog, count: int, start: int = 1, batch: int = 2000, **fields) -> None:
    """Announces ``count`` records (ports ``start``..) over UDP, in batches that the
    catalog is given time to take in; a batch partly lost to a full socket buffer
    is sent again (same keys, so nothing is doubled)."""
    template = {"type": "filler", "owner": "tests", **fields}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for first in range(start, start + count, batch):
            last = min(first + batch, start + count)
            for _attempt in range(5):
                for port in range(first, last):
                    sock.sendto(
                        orjson.dumps({**template, "port": port}), ("127.0.0.1", catalog.port)
                    )
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    have = ports(
                        orjson.loads(get(catalog, "/query.json").content), type=template["type"]
                    )
                    if all(port in have for port in range(first, last)):
                        break
                    time.sleep(0.05)
                else:
                    continue
                break
            else:
                raise AssertionError(f"catalog did not take in ports {first}..{last - 1}")
