"""``python -m catalog.query``, the terminal browser, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.query import build_expression, table
from harness.processes import free_port, python_module
from tests.test_catalog_helpers import send_udp, wait_for_records


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        python_module("catalog.query", *args),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def listed(catalog):
    send_udp(catalog.port, {"type": "hashtable", "project": "alpha", "owner": "ann", "port": 9001})
    send_udp(catalog.port, {"type": "hashtable", "project": "beta", "owner": "bob", "port": 9002})
    send_udp(catalog.port, {"type": "chirp", "owner": "\x1b[31mred", "port": 9003})
    wait_for_records(catalog, lambda rs: len(rs) == 3)
    return catalog


def test_table_of_every_service(listed):
    result = run("-c", listed.host)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "NAME", "PORT", "OWNER", "PROJECT", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["chirp", "hashtable", "hashtable"]
    assert "\x1b" not in result.stdout and "\\u001b[31mred" in result.stdout
    # Columns line up: every row starts its PORT column at the same place.
    starts = {
        line.index(port) for line, port in zip(lines[1:], ("9003", "9001", "9002"), strict=True)
    }
    assert len(starts) == 1


def test_filters_and_json(listed):
    result = run(
        "--type", "hashtable", "--project", "beta", "--json", env={"CATALOG_HOST": listed.host}
    )
    assert result.returncode == 0, result.stderr
    assert [r["port"] for r in json.loads(result.stdout)] == [9002]
    result = run("-c", listed.host, "-w", "port < 9003", "--type", "hashtable", "--json")
    assert sorted(r["port"] for r in json.loads(result.stdout)) == [9001, 9002]


def test_no_catalog_answering_is_one_line_and_status_1():
    result = run("-c", f"127.0.0.1:{free_port()}", "-t", "2")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no catalog answered" in result.stderr
    assert "Connection refused" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "port = 1"], "invalid expression: use == to compare, not = (position 6)"),
        (["-c", "host:notaport"], "bad catalog address"),
        (["-t", "0"], "not a number of seconds greater than 0"),
    ],
)
def test_usage_mistakes_are_status_2_with_a_message(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_expressions_are_combined_so_that_each_part_still_holds():
    assert build_expression(None, None, None) is None
    assert build_expression("a or b", "t", None) == '(a or b) and type=="t"'
    assert build_expression(None, 'we"ird', "p") == 'type=="we\\"ird" and project=="p"'


def test_long_values_are_cut_to_keep_the_table_readable():
    text = table([{"type": "t", "name": "n" * 100, "port": 1, "lastheardfrom": 0}], now=65)
    assert "n" * 39 + "…" in text and "n" * 41 not in text and text.endswith("1m")


def test_a_number_of_any_length_is_no_mistake():
    result = run("-c", f"127.0.0.1:{free_port()}", "-t", "1", "-w", "port > " + "9" * 5000)
    assert result.returncode == 1 and "no catalog answered" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_while_waiting_for_a_catalog_is_quiet():
    """The installed command (its entry point is main(), not the module's __main__)."""
    command = Path(sys.executable).with_name("catalog-query")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [str(command), "-c", f"127.0.0.1:{port}", "-t", "30"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(20)
        connection, _ = silent.accept()  # it is waiting for the reply now
        with connection:
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
