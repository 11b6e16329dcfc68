"""User mistakes get one message and a non-zero exit, never a traceback: the server,
TestPerf, the chaos battery, the benchmarks and the scripts, run for real.

(More of the server's and TestPerf's argument checks are in test_server_process.py,
test_perftest.py and test_testperf_cli.py.)
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harness.herd import Herd
from harness.processes import ROOT, free_port, python_script, run_program, tcp_open, wait_until
from hashtable.database import Database
from tests.server_support import start_server


def run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT, **kwargs
) -> subprocess.CompletedProcess:
    """``python ARGS`` (a script named relative to the repository) from ``cwd``."""
    if args[0].endswith(".py"):
        args = [str(ROOT / args[0]), *args[1:]]
    return run_program(
        [sys.executable, *args],
        input="",
        cwd=cwd,
        env=env or {"CATALOG_HOST": f"127.0.0.1:{free_port()}"},
        **kwargs,
    )


def with_a_file(args: list[str], tmp_path: Path) -> list[str]:
    """``args`` with ``{file}`` standing for a file (where a folder is expected)."""
    file = tmp_path / "a-file"
    file.write_text("a file, not a folder\n")
    return [arg.replace("{file}", str(file)) for arg in args]


def assert_one_message(done: subprocess.CompletedProcess, message: str, status: int = 2) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == status, output
    assert message in done.stderr, output
    assert "Traceback" not in output and "Exception ignored" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data-dir", ""], "argument --data-dir: an empty path names no file or folder"),
        (["--data-dir", "{file}"], "cannot use as data directory: it is a file"),
        (["--data-dir", "{file}/table"], "cannot use as data directory: Not a directory"),
        (["--catalog", ""], "--catalog: no address in ''"),  # not blamed on CATALOG_HOST
        (["--host", "no.such.host.invalid", "--port", "0"], "cannot listen on no.such.host"),
    ],
)
def test_the_server_refuses_bad_places_to_keep_and_serve_from(tmp_path: Path, args, message):
    data = [] if "--data-dir" in args else ["--data-dir", str(tmp_path / "data")]
    args = with_a_file(args, tmp_path)
    assert_one_message(run(["HashTableServer.py", "p", *data, *args]), message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("12Q", "argument --max-memory: '12Q' is not a size in bytes (such as 536870912, 512M"),
        ("-5M", "argument --max-memory: '-5M' is not a size in bytes"),
        ("0%", "argument --max-memory: '0%' is not a share of memory (more than 0%, at most"),
        ("150%", "argument --max-memory: '150%' is not a share of memory"),
    ],
)
def test_the_server_refuses_a_memory_limit_it_cannot_read(tmp_path: Path, value, message):
    args = ["HashTableServer.py", "p", "--data-dir", str(tmp_path), f"--max-memory={value}"]
    assert_one_message(run(args), message)


def test_the_server_without_a_home_folder_asks_for_a_data_dir(tmp_path: Path):
    """A relative HOME (or none that can be found) and a relative XDG_STATE_HOME (which
    the XDG rules say to ignore) would put the table wherever the server was started;
    a HOME that does not exist (a daemon's /nonexistent) in a tree made up under it."""
    missing = tmp_path / "nonexistent-home"
    for home in ("not/absolute", "", str(missing)):  # "" would have put it in /.local/state
        env = {**os.environ, "HOME": home, "XDG_STATE_HOME": "also/relative"}
        done = run(["HashTableServer.py", "p", "--catalog", "127.0.0.1:9"], env=env, cwd=tmp_path)
        assert_one_message(done, "no home folder to keep the table in: give --data-dir")
        assert list(tmp_path.iterdir()) == []  # nothing made where it was started, or in HOME


def modes(folder: Path) -> dict[str, int]:
    """The folder's mode and each entry's, by name ("." for the folder)."""
    found = {path.name: stat.S_IMODE(path.lstat().st_mode) for path in folder.iterdir()}
    return {".": stat.S_IMODE(folder.stat().st_mode), **found}


def unfit_folders(tmp_path: Path) -> dict[Path, str]:
    """Existing folders no service may take (a copy of /tmp, a folder of scripts, as /
    or a home folder would be), and what the refusal says."""
    open_to_all = tmp_path / "open-to-all"
    open_to_all.mkdir()
    open_to_all.chmod(0o1777)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    (tools / "tool.sh").chmod(0o755)
    tools.chmod(0o755)
    return {
        open_to_all: "other users can write in it (mode 1777)",
        tools: "it already holds other files (1, e.g. 'tool.sh') and none of",
    }


def test_an_existing_folder_unfit_for_a_table_is_refused_and_left_as_it_was(tmp_path: Path):
    """The server made any --data-dir 0700 and every file in it 0600: /tmp's 1777 gone,
    a script's exec bit gone (as root, / itself made 0700). Now it refuses, touching nothing."""
    for folder, message in unfit_folders(tmp_path).items():
        before = modes(folder)
        done = run(["HashTableServer.py", "p", "--no-auth", "--data-dir", str(folder)])
        assert_one_message(done, message)
        assert modes(folder) == before  # no mode changed, no lock file made


def test_the_herd_refuses_an_unfit_data_dir_too(tmp_path: Path):
    herd = Herd(tmp_path)
    for folder, message in unfit_folders(tmp_path).items():
        before = modes(folder)
        herd.start("Goloman", extra=["--data-dir", str(folder)], wait=False)
        process = herd.processes.pop("Goloman")
        wait_until(lambda p=process: not p.alive(), what="the herd server to refuse")
        assert process.popen.returncode == 2, process.output()
        assert message in process.output() and "Traceback" not in process.output()
        assert modes(folder) == before


def test_an_existing_folder_keeps_its_mode_and_the_files_that_are_not_the_tables(
    spawn, tmp_path: Path
):
    """A folder the user made (0755 under the usual umask) is used as it is, with a
    warning; an earlier version's table beside the user's notes: the table's files
    are made private, the notes are not touched. What the server creates is 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    earlier = tmp_path / "earlier"
    Database(earlier).close()
    for table_file in earlier.iterdir():
        table_file.chmod(0o644)
    (earlier / "notes.txt").write_text("what this table is for\n")
    (earlier / "notes.txt").chmod(0o664)
    earlier.chmod(0o750)
    new = tmp_path / "new" / "deeper" / "data"
    for folder in (shared, earlier, new):
        server = start_server(spawn, folder, "--no-auth")
        said = server.log()  # the warning comes before the listening line
        assert server.process.stop() == 0
        found = modes(folder)
        table = {name: mode for name, mode in found.items() if name.startswith("table.")}
        assert set(table) >= {"table.ckpt", "table.txn", "table.lock", "table.origin"}
        assert set(table.values()) == {0o600}, found
        if folder == shared:
            assert found["."] == 0o755
            assert "can be read by other users (mode 0755)" in said
        elif folder == earlier:
            assert found["."] == 0o750 and found["notes.txt"] == 0o664
    for made in (new, new.parent, new.parent.parent):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_the_server_keeps_serving_when_its_output_cannot_be_written(tmp_path: Path):
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    with open("/dev/full", "wb") as full:
        server = subprocess.Popen(
            python_script(
                "HashTableServer.py", "p", "--host", "127.0.0.1", "--port", str(port),
                "--data-dir", str(tmp_path / "data"), "--catalog", f"127.0.0.1:{free_port()}",
            ),
            stdout=full,
            stderr=log,
            cwd=ROOT,
        )  # fmt: skip
    said = "cannot print the listening line: No space left on device"
    try:
        wait_until(
            lambda: said in (tmp_path / "server.log").read_text() or server.poll() is not None,
            what="the server to try printing its listening line",
        )
        assert tcp_open("127.0.0.1", port) and server.poll() is None
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert said in text
    assert "Traceback" not in text and "Exception ignored" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "5000"], "5000 client processes is more than 1024"),
        (["--sweep", "1,2,4096"], "4096 client processes is more than 1024"),
        (["--value-size", "99999999999999"], "bytes of padding is more than 67108864"),
        (["--give-up-after", "0"], "argument --give-up-after: '0' is not a number of seconds"),
        (["--sweep", ","], "give at least one, comma-separated"),
    ],
)
def test_testperf_refuses_sizes_that_would_exhaust_the_machine(args, message):
    assert_one_message(run(["TestPerf.py", "p", *args]), message)


def test_testperf_out_of_file_descriptors_says_so(spawn, tmp_path: Path):
    server = start_server(spawn, tmp_path / "data")

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    done = run(
        ["TestPerf.py", "p", "--server", f"127.0.0.1:{server.port}", "--clients", "40",
         "--stage-seconds", "0.1", "--min-ops", "5", "--stages", "insert"],
        preexec_fn=few_files,
    )  # fmt: skip
    assert_one_message(done, "TestPerf: cannot start client process ", status=1)
    assert "Too many open files" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "chaos", "--only", "crash,bogus"], "unknown scenario bogus"),
        (["-m", "chaos", "--seed", "x"], "argument --seed: invalid int value"),
        (["-m", "chaos", "--work-dir", ""], "an empty path names no file or folder"),
        (["-m", "chaos", "--work-dir", "{file}", "--only", "crash"], "cannot use"),
        (["bench/catalog_bench.py", "--sizes", "1000,x"], "'x' is not a whole number"),
        (
            ["bench/bomb_stall.py", "--seconds", "0"],
            "'0' is not a number of seconds greater than 0",
        ),
        (["bench/catalog_bench.py", "--queries", "0"], "'0' is not a whole number"),
        (["bench/catalog_bench.py", "--rates", "-5"], "'-5' is not a number greater than 0"),
        (["bench/catalog_bench.py", "--big", "-1"], "'-1' is not a whole number of at least 0"),
        (["bench/compaction_bench.py", "--dir", "{file}/x"], "--dir: cannot use"),
        (["bench/compaction_bench.py", "--batch", "0"], "'0' is not a whole number"),
        (["bench/lb_bench.py", "--tss", "2,0"], "'0' is not a whole number"),
        (["bench/lb_bench.py", "--clients", "none"], "'none' is not a whole number"),
        (["bench/scan_bench.py", "--keys", "-1"], "'-1' is not a whole number"),
        (["bench/vs_redis.py", "--seconds", "0"], "'0' is not a number of seconds"),
        (["bench/vs_redis.py", "--repeat", "0"], "'0' is not a whole number"),
        (["bench/ab_servers.py", ".", ".", "--repeat", "0"], "'0' is not a whole number"),
        (["bench/ab_servers.py", ".", "/nowhere"], "/nowhere: no HashTableServer.py there"),
        (["scripts/demo.py", "--sweep", "1,0"], "'0' is not a whole number"),
        (["scripts/report_sweep.py", "--modes", "sometimes"], "unknown sync mode sometimes"),
        (["scripts/report_sweep.py", "--stage-seconds", "0"], "'0' is not a number of seconds"),
        (["scripts/report_sweep.py", "--out", "{file}/x"], "--out: cannot use"),
    ],
)
def test_the_battery_benchmarks_and_scripts_refuse_bad_options(tmp_path: Path, args, message):
    assert_one_message(run(with_a_file(args, tmp_path)), message)


@pytest.mark.parametrize(
    "script",
    sorted(
        str(p.relative_to(ROOT)) for p in [*ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py")]
    ),
)
def test_every_benchmark_and_script_starts(script: str):
    """Their imports still resolve (a moved name breaks a benchmark nobody runs daily)."""
    done = run([script, "--help"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
