"""Helpers for the hash table server and client tests: start a real server, talk raw JSON lines."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from harness.services import listening_port
from netkit.framing import LineFramer
from tests.procs import Process, free_port, python_script, wait_until


class ServerHandle:
    def __init__(self, process: Process, port: int, data_dir: Path, project: str) -> None:
        self.process = process
        self.port = port
        self.data_dir = data_dir
        self.project = project

    def log(self) -> str:
        return self.process.output()


def start_server(
    spawn: Callable[..., Process],
    data_dir: Path,
    *extra: str,
    project: str = "test-project",
    catalog: str | None = None,
    port: int = 0,
) -> ServerHandle:
    """``HashTableServer.py`` on 127.0.0.1, ready to serve. Without ``catalog`` it
    announces to a loopback port where nothing listens."""
    args = [project, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    args += ["--catalog", catalog or f"127.0.0.1:{free_port()}", *extra]
    process = spawn(python_script("HashTableServer.py", *args), name="server")

    found = wait_until(
        lambda: listening_port(process.output()) or not process.alive(), timeout=20, what="server"
    )
    assert process.alive(), f"the server exited:\n{process.output()}"
    return ServerHandle(process, found, data_dir, project)


class Wire:
    """A raw protocol connection: send JSON (or bytes) lines, read reply objects."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.framer = LineFramer(1 << 30)
        self.lines: list[bytes] = []

    def send(self, *messages: Any) -> None:
        data = b"".join(m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages)
        self.sock.sendall(data)

    def reply(self) -> dict[str, Any]:
        while not self.lines:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.lines.extend(self.framer.feed(data))
        return orjson.loads(self.lines.pop(0))

    def call(self, message: Any) -> dict[str, Any]:
        self.send(message)
        return self.reply()

    def closed_by_server(self) -> bool:
        """True once the server has closed this connection (reads until EOF)."""
        try:
            while self.sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
