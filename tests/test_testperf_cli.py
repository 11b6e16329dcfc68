"""TestPerf as a user runs it: output paths checked before the sweep, and when no
server answers, saying what it waits for, giving up when asked, starting when it comes."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import ROOT, free_port, python_script, run_program, wait_until
from netkit.cliargs import writable_file
from tests.server_support import start_server

QUICK = ["--stage-seconds", "0.1", "--min-ops", "10", "--stages", "insert,lookup"]


def run_testperf(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_program([sys.executable, str(ROOT / "TestPerf.py"), *args], timeout=timeout)


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--json", "missing-folder/out.json", "No such file or directory"),
        ("--csv", ".", "is a folder, not a file"),
        ("--plot", "a-file/plot.png", "Not a directory"),  # a file where a folder should be
        ("--plot", "plot.xyz", "matplotlib cannot write .xyz files"),
    ],
)
def test_an_output_path_that_cannot_be_written_stops_it_before_anything_runs(
    tmp_path: Path, option: str, path: str, message: str
):
    (tmp_path / "a-file").write_text("not a folder")
    target = tmp_path / path
    # No catalog and no server here: got past the check, it would wait for one.
    started = time.monotonic()
    done = run_testperf("proj", "--catalog", f"127.0.0.1:{free_port()}", option, str(target))
    assert time.monotonic() - started < 20
    assert done.returncode == 2
    assert f"argument {option}: " in done.stderr or f"{option}: " in done.stderr
    assert message in done.stderr
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""  # the sweep did not start
    if target.suffix == ".xyz":
        assert not target.exists()


@pytest.mark.parametrize("args", [["bad/name"], [".lead"], ["y" * 127, "3", "2"]])
def test_a_project_no_server_can_have_is_one_error_not_a_wait(args):
    done = run_testperf(*args, "--catalog", f"127.0.0.1:{free_port()}", timeout=20)
    assert done.returncode == 2 and "cannot name a project" in done.stderr, done.stderr
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr


def test_checking_a_path_leaves_an_existing_file_alone_and_no_new_one_behind(tmp_path: Path):
    kept = tmp_path / "kept.csv"
    kept.write_text("earlier results\n")
    assert writable_file(str(kept)) == kept
    assert kept.read_text() == "earlier results\n"
    fresh = tmp_path / "fresh.json"
    assert writable_file(str(fresh)) == fresh
    assert not fresh.exists()
    with pytest.raises(argparse.ArgumentTypeError, match="is a folder"):
        writable_file(str(tmp_path))


def test_a_mistyped_project_says_what_it_waits_for_then_gives_up(spawn, catalog, tmp_path: Path):
    start_server(spawn, tmp_path / "data", project="right", catalog=catalog.host)
    started = time.monotonic()
    done = run_testperf("rihgt", "--catalog", catalog.host, "--give-up-after", "3", *QUICK)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    waiting = f"the catalog ({catalog.host}) lists no hashtable server for project 'rihgt'"
    assert done.stderr.count(waiting) >= 2, done.stderr  # said at once, then again
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("TestPerf: gave up: hash table project 'rihgt' unreachable for 3 s")
    assert "Traceback" not in done.stderr
    assert 3 <= elapsed < 3 + 10  # not the full backoff past the limit
    assert "===" not in done.stdout


def test_an_absent_server_address_is_named_and_given_up_on(tmp_path: Path):
    port = free_port()
    done = run_testperf(
        "p", "--server", f"127.0.0.1:{port}", "--give-up-after", "1", "--clients", "2"
    )
    assert done.returncode == 1
    assert f"hash table at 127.0.0.1:{port}: connection refused" in done.stderr
    assert "client process" not in done.stderr  # no client processes were started for nothing
    assert "Traceback" not in done.stderr


def test_it_keeps_saying_what_it_waits_for_and_starts_when_the_server_comes(
    spawn, catalog, tmp_path: Path
):
    perf = spawn(
        python_script("TestPerf.py", "late", "--catalog", catalog.host, "--clients", "2", *QUICK),
        name="testperf",
    )
    waiting = "lists no hashtable server for project 'late'"
    wait_until(lambda: waiting in perf.output(), timeout=5, what="the first message")
    wait_until(lambda: perf.output().count(waiting) >= 2, timeout=10, what="it said again")
    assert perf.alive()
    start_server(spawn, tmp_path / "data", project="late", catalog=catalog.host)
    wait_until(lambda: not perf.alive(), timeout=60, what="TestPerf to run and finish")
    assert perf.popen.returncode == 0, perf.output()
    assert "=== 2 concurrent client(s) ===" in perf.output()


def test_clients_that_lose_the_server_give_up_with_a_message(spawn, tmp_path: Path):
    server = start_server(spawn, tmp_path / "data")
    perf = spawn(
        python_script(
            "TestPerf.py", "p", "--server", f"127.0.0.1:{server.port}", "--clients", "2",
            "--give-up-after", "1", "--stage-seconds", "30", "--stages", "insert",
        ),
        name="testperf",
    )  # fmt: skip
    # The first client and two client processes have connected: the sweep is on.
    wait_until(lambda: server.log().count(" connected (") >= 3, timeout=20, what="the clients")
    server.process.kill()
    wait_until(lambda: not perf.alive(), timeout=30, what="TestPerf to give up")
    output = perf.output()
    assert perf.popen.returncode == 1
    assert "TestPerf client: gave up: hash table at 127.0.0.1" in output
    assert "TestPerf: client process" in output and "exited with status 1" in output
    assert "Traceback" not in output
