"""A herd of real server processes on free loopback ports, for the tests and the benchmark."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

from harness.processes import (
    Process,
    free_port,
    python_module,
    python_script,
    tcp_open,
    wait_until,
)
from herd.config import HerdConfig, ServerAddress, load_config, write_config

NAMES = ("Goloman", "Hands", "Holiday", "Welsh", "Wilkes")


def free_config(path: Path, template: HerdConfig | None = None) -> HerdConfig:
    """The shipped herd (or ``template``) on free ports: port P for clients, P+1 for peers."""
    template = template or load_config()
    servers = {}
    taken: set[int] = set()
    for name in template.servers:
        port = free_port()
        while {port, port + 1} & taken:  # free_port does not know the ones already chosen
            port = free_port()
        taken |= {port, port + 1}
        servers[name] = ServerAddress(name, "127.0.0.1", port, port + 1)
    config = HerdConfig(template.herd, servers, template.links)
    write_config(config, path)
    return config


class Herd:
    """Servers of one configuration, started and stopped by name; ``tree``: run the
    herd of another checkout of the project (bench/herd_bench.py --before)."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        config: HerdConfig | None = None,
        tree: Path | None = None,
        name: str = "herd",
    ) -> None:
        self.directory = directory
        self.tree = tree
        self.config_path = directory / f"{name}.json"
        self.config = config or free_config(self.config_path)
        if config is not None:
            write_config(config, self.config_path)
        self.extra = list(extra)
        self.prefix = "" if name == "herd" else f"{name}-"
        self.processes: dict[str, Process] = {}

    def port(self, name: str) -> int:
        return self.config.servers[name].port

    def log_file(self, name: str) -> Path:
        return self.directory / f"{self.prefix}{name}.log"

    def start(self, *names: str, extra: Iterable[str] = (), wait: bool = True) -> None:
        for name in names or self.config.servers:
            args = [name, "--config", str(self.config_path), "--log-file", str(self.log_file(name))]
            command = (
                python_module("herd", *args)
                if self.tree is None
                else python_script("server.py", *args, tree=self.tree)
            )
            self.processes[name] = Process(
                [*command, *self.extra, *extra], self.directory / f"{self.prefix}{name}.out"
            )
        if wait:
            for name in names or self.config.servers:
                self.wait_listening(name)

    def wait_listening(self, name: str, timeout: float = 30.0) -> None:
        process = self.processes[name]
        wait_until(
            lambda: not process.alive() or tcp_open("127.0.0.1", self.port(name)),
            timeout=timeout,
            what=f"{name} to listen",
        )
        if not process.alive():
            raise RuntimeError(f"{name} exited:\n{process.output()[-3000:]}")

    def kill(self, *names: str) -> None:
        for name in names:
            self.processes.pop(name).kill()

    def stop(self, *names: str) -> None:
        for name in names or list(self.processes):
            process = self.processes.pop(name, None)
            if process is not None:
                process.stop()

    def knows(self, server: str, client: str) -> str | None:
        """The AT line ``server`` answers for ``client``, or None when it knows nothing."""
        first = ask(self.port(server), f"WHATSAT {client} 1 1\n").split("\n", 1)[0]
        return first if first.startswith("AT ") else None

    def links_up(self, name: str) -> set[str]:
        """The neighbours ``name`` currently has a link with, from its log."""
        up: set[str] = set()
        try:
            text = self.log_file(name).read_text(errors="replace")
        except FileNotFoundError:
            return up
        for line in text.splitlines():
            if " link to " in line:
                neighbour = line.split(" link to ", 1)[1].split()[0]
                if " up (" in line:
                    up.add(neighbour)
                elif " dropped" in line:
                    up.discard(neighbour)
        return up

    def wait_links(self, expected: dict[str, set[str]] | None = None, timeout: float = 20.0):
        """Until every running server has exactly the links ``expected`` (default: all of
        its neighbours that are running)."""
        running = set(self.processes)
        expected = expected or {
            name: set(self.config.neighbours(name)) & running for name in running
        }
        try:
            wait_until(
                lambda: all(self.links_up(name) == links for name, links in expected.items()),
                timeout=timeout,
                what=f"links {expected}",
            )
        except TimeoutError as timeout_error:
            # What each server's log says instead, and its last events: the cause.
            seen = {name: self.links_up(name) for name in expected}
            tails = "\n".join(
                f"--- {name}:\n{self._log_tail(name)}"
                for name, links in expected.items()
                if seen[name] != links
            )
            raise TimeoutError(f"{timeout_error}; the logs say {seen}\n{tails}") from None

    def _log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        traffic = (" in  peer ", " out peer ", " in  client ", " out client ")
        events = [line for line in text.splitlines() if not any(t in line for t in traffic)]
        return "\n".join(events[-lines:])


def ask(port: int, text: str, timeout: float = 10.0) -> str:
    """Sends ``text``, closes the sending side, returns everything the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(text.encode())
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()
