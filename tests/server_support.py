"""Helpers for the hash table server and client tests: start a real server, talk raw JSON lines."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from chaos.wire import LineConn
from harness.processes import Process, free_port, python_script, wait_until
from harness.services import listening_port
from netkit.security import load_secret


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


class Wire(LineConn):
    """A raw protocol connection speaking the hash table's JSON: send JSON (or
    bytes) lines, read reply objects. The line I/O is chaos.wire's. Over TLS with
    the tests' secret unless ``plain`` (for servers started with --no-auth)."""

    def __init__(self, port: int, timeout: float = 10.0, plain: bool = False) -> None:
        tls = None if plain else load_secret().client_context()
        super().__init__(port, timeout, max_line=1 << 30, tls=tls)

    def send(self, *messages: Any) -> None:
        data = b"".join(m if isinstance(m, bytes) else orjson.dumps(m) + b"\n" for m in messages)
        super().send(data)

    def reply(self) -> dict[str, Any]:
        return orjson.loads(self.read_line())

    def call(self, message: Any) -> dict[str, Any]:  # type: ignore[override]  # JSON in, JSON out
        self.send(message)
        return self.reply()

    def closed_by_server(self, within: float = 5.0) -> bool:
        """True if the server closes this connection within ``within`` seconds
        (whatever it sends first is read and dropped); False if it is still open."""
        deadline = time.monotonic() + within
        timeout = self.sock.gettimeout()
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    if not self.receive():
                        return True
                except TimeoutError:
                    return False
                except ConnectionError:  # reset, or the TLS layer cut short
                    return True
            return False
        finally:
            self.sock.settimeout(timeout)


class OutOfFiles(socket.socket):
    """A listener whose first accept fails as if the process had no file descriptors left."""

    failures = 1

    def accept(self):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()
