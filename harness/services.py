"""Starting the project's own services as real processes: a catalog, hash table servers."""

from __future__ import annotations

import re
from pathlib import Path

from harness.processes import (
    ROOT,
    Process,
    free_port,
    python_module,
    python_script,
    tcp_open,
    wait_until,
)

# The first address of the line (docs/protocol.md, "The listening line"); greedy up to
# the last colon of that address, so that an IPv6 one ([::1]:PORT) parses too. The
# space or newline after the port: output read mid-line must not give half a port.
# Not anchored to the line's start: the herd's servers say "NAME listening on ...".
_LISTENING = re.compile(r"listening on (\S+):(\d+)\s")


def listening_port(output: str) -> int | None:
    """The port in a hash table server's "listening on HOST:PORT ..." line, once it is out."""
    match = _LISTENING.search(output)
    return int(match.group(2)) if match else None


class StartFailed(RuntimeError):
    """A service exited or never became ready; the message carries its output."""


def start_catalog(
    state_dir: Path, log_dir: Path, port: int | None = None, *options: str
) -> tuple[Process, int]:
    """Our catalog on loopback (with ``options``); returns it and its port once it answers."""
    port = port or free_port()
    process = Process(
        python_module(
            "catalog",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            *options,
        ),
        log_dir / f"catalog-{port}.log",
    )
    wait_ready(process, lambda: tcp_open("127.0.0.1", port), "catalog")
    return process, port


def start_hashtable_server(
    project: str,
    data_dir: Path,
    catalog: str,
    log_dir: Path,
    *extra: str,
    tree: Path = ROOT,
) -> tuple[Process, int]:
    """A hash table server on loopback announcing to ``catalog``; returns it and its port.
    ``tree``: the checkout whose server to run (bench/ab_servers.py compares two)."""
    log_path = log_dir / f"server-{project}.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    process = Process(
        python_script(
            "HashTableServer.py",
            project,
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(data_dir),
            *extra,
            tree=tree,
        ),
        log_path,
        env={"CATALOG_HOST": catalog},
    )

    return process, wait_ready(
        process, lambda: listening_port(process.output()[start:]), "hash table server"
    )


def wait_ready(process: Process, ready, what: str, timeout: float = 20.0):
    """Waits until ``ready()`` gives something true and returns it; stops the process
    and raises ``StartFailed``, with its output, if it exits or takes too long."""
    try:
        value = wait_until(lambda: ready() or not process.alive(), timeout=timeout, what=what)
    except TimeoutError:
        process.stop()
        raise StartFailed(
            f"{what} did not start in {timeout:g} s:\n{process.output()[-2000:]}"
        ) from None
    if not process.alive():
        process.stop()
        raise StartFailed(f"{what} exited:\n{process.output()[-2000:]}")
    return value
