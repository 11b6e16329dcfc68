"""What the lb tests share: starting TSs and LSs, the sample's answers, tables, catalogs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.processes import Process, free_port, python_module, tcp_open, wait_until

TIMEOUT = "1"  # the LS's time-out in these tests, to keep them short
RIGHT = {
    b"www.princeton.edu": b"www.princeton.edu 128.1.1.4 A IN",
    b"rutgers.edu": b"rutgers.edu 172.34.4.6 A IN",
    b"amazon.com": b"amazon.com 94.5.6.7 A IN",
    b"google.com": b"GOOGLE.com 46.1.3.7 A IN",
}
# Our catalog, and the real cctools catalog_server (skipped where it is not installed).
CATALOG_KINDS = ["ours", pytest.param("cctools", marks=pytest.mark.cctools)]


def catalog_of_kind(request: pytest.FixtureRequest):
    """For a fixture parametrized with ``CATALOG_KINDS``: the running catalog."""
    return request.getfixturevalue("catalog" if request.param == "ours" else "cctools_catalog")


def start_ts(
    spawn, table: Path, *options: str, port: int | None = None, env=None, host: str = "127.0.0.1"
) -> tuple[Process, int]:
    port = free_port() if port is None else port
    process = spawn(
        python_module("lb.ts", str(port), str(table), "--host", host, *options),
        env=env,
        name="ts",
    )
    wait_until(lambda: tcp_open(host, port) or not process.alive(), what="TS to listen")
    assert process.alive(), process.output()
    return process, port


def start_ls(spawn, ts_ports: list[int], *options: str, env=None) -> tuple[Process, int]:
    port = free_port()
    pairs = [word for ts in ts_ports for word in ("127.0.0.1", str(ts))]
    process = spawn(
        python_module(
            "lb.ls", str(port), *pairs, "--timeout", TIMEOUT, "--host", "127.0.0.1", *options
        ),
        env=env,
        name="ls",
    )
    wait_until(lambda: tcp_open("127.0.0.1", port) or not process.alive(), what="LS to listen")
    assert process.alive(), process.output()
    return process, port


def write_table(path: Path, entries: dict[str, str]) -> Path:
    path.write_text("".join(f"{name} {address} A\n" for name, address in entries.items()))
    return path
