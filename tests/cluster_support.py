"""A real cluster for the tests: N hash table server processes NAME-0 .. NAME-(N-1),
each with its own data directory, announcing to the test's catalog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.processes import Process, python_script, wait_until
from harness.services import listening_port
from hashtable.client import HashTableClient
from hashtable.cluster import ClusterClient
from tests.server_support import ServerHandle

# Failed servers are tried again within a fraction of a second: tests wait less.
FAST = {"backoff_initial": 0.05, "backoff_cap": 0.2, "timeout": 3.0}


class Cluster:
    def __init__(
        self,
        spawn: Callable[..., Process],
        root: Path,
        catalog: str,
        name: str,
        servers: int,
        *extra: str,
    ) -> None:
        self.spawn, self.root, self.catalog, self.name, self.extra = (
            spawn,
            root,
            catalog,
            name,
            extra,
        )
        # Started together, then waited for: a server takes a second to start here.
        started = [self._spawn(index) for index in range(servers)]
        self.servers: list[ServerHandle] = [self._ready(*each) for each in started]

    def _spawn(self, index: int, port: int = 0, *more: str) -> tuple[Process, str]:
        project = f"{self.name}-{index}"
        args = [project, "--host", "127.0.0.1", "--port", str(port), *self.extra, *more]
        args += ["--data-dir", str(self.root / project), "--catalog", self.catalog]
        return self.spawn(python_script("HashTableServer.py", *args), name=project), project

    def _ready(self, process: Process, project: str) -> ServerHandle:
        port = wait_until(
            lambda: listening_port(process.output()) or not process.alive(),
            timeout=30,
            what=f"{project} to listen",
        )
        assert process.alive(), f"{project} exited:\n{process.output()}"
        return ServerHandle(process, port, self.root / project, project)

    def _start(self, index: int, port: int = 0, *more: str) -> ServerHandle:
        return self._ready(*self._spawn(index, port, *more))

    def kill(self, index: int) -> None:
        """SIGKILL: the crash the promises are about."""
        self.servers[index].process.kill()

    def restart(self, index: int, *more: str) -> None:
        """Starts it again on its port with its data directory (it recovers), with
        ``more`` options than the others."""
        self.servers[index] = self._start(index, self.servers[index].port, *more)

    def client(self, copies: int, **options: Any) -> ClusterClient:
        return ClusterClient(
            self.name, len(self.servers), copies, catalog=self.catalog, **{**FAST, **options}
        )

    def contents(self, index: int) -> dict[str, Any]:
        """Everything server ``index`` holds, asked directly."""
        port = self.servers[index].port
        with HashTableClient.at("127.0.0.1", port, give_up_after=20) as server:
            return dict(server.scan(""))
