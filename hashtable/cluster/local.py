"""``python -m hashtable.cluster start|stop|status``: a cluster of N servers on this machine.

    python -m hashtable.cluster start NAME N [--dir DIR] [--catalog HOST:PORT] [-- SERVER OPTIONS...]
    python -m hashtable.cluster status NAME [--dir DIR]
    python -m hashtable.cluster stop NAME [--dir DIR] [--timeout SECONDS]

(also the ``cluster`` command). ``start`` launches ``HashTableServer.py NAME-0``
... ``NAME-(N-1)`` (those not running already: after one died, ``start``
again brings it back), each its own process in the background, listening on
loopback (``-- --host ADDR`` for another address) and announcing itself to the
catalog, and returns once all of them listen. Each has its output in
``DIR/NAME-i.log`` and its pid in ``DIR/NAME-i.pid``; ``DIR`` defaults to
``./cluster-run/NAME``. The data stays in each server's own data directory
(``~/.local/state/hashtable/NAME-i``, or ``--data-dir D``: ``D/NAME-i``), so
a cluster stopped and started again has its keys. ``stop`` sends each SIGTERM
and waits for it to exit; one still running after ``--timeout`` (10 s) is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalog.client import catalog_addresses
from harness.procfs import alive
from harness.services import listening_port
from hashtable.names import project_problem
from netkit.addresses import AddressError
from netkit.cliargs import positive_int, positive_seconds, program_name

DEFAULT_DIR = Path("cluster-run")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LOCAL_MAX_SERVERS = 64  # processes one command starts on this machine
# HashTableServer.py sits beside the hashtable package, in a checkout as when installed.
SERVER = Path(__file__).resolve().parents[2] / "HashTableServer.py"


def start(name: str, servers: int, directory: Path, data_dir: Path | None, extra: list[str]) -> int:
    """Starts those of NAME-0 ... NAME-(N-1) that are not running (all of them, or
    the ones that died), and waits until each listens."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"cannot use {directory} for pid files and logs: {error.strerror}", file=sys.stderr)
        return 1
    projects = _projects(directory, name)
    running = {project: pid for project in projects if (pid := _pid(directory, project))}
    beyond = [project for project in running if _index(project) >= servers]
    if beyond:
        print(f"{', '.join(beyond)} running: cluster {name!r} has more than {servers} servers "
              f"(stop it first)", file=sys.stderr)  # fmt: skip
        return 1
    for stale in projects:
        if stale not in running:
            (directory / f"{stale}.pid").unlink()
    if "--host" not in extra:
        extra = ["--host", "127.0.0.1", *extra]
    started: dict[str, int] = {}  # project -> where this run's output starts in its log
    processes: dict[str, subprocess.Popen] = {}
    for index in range(servers):
        project = f"{name}-{index}"
        if project in running:
            print(f"{project} already running (pid {running[project]})")
            continue
        args = [sys.executable, str(SERVER), project, *extra]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir / project)]
        # Appended to: a server that died left the reason in its log.
        with open(directory / f"{project}.log", "ab") as out:
            started[project] = out.tell()
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        processes[project] = process
        (directory / f"{project}.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    for project, offset in started.items():
        log = directory / f"{project}.log"
        while (port := listening_port(_output(log, offset))) is None:
            status = processes[project].poll()
            if status is not None or time.monotonic() > deadline:
                why = _failure(_output(log, offset))
                print(f"{project} did not start: {why} (log {log})", file=sys.stderr)
                # The others were started the same way: stopped, and said no more about.
                _stop(directory, {p: _pid(directory, p) for p in started}, STOP_TIMEOUT, quiet=True)
                return 2 if status == 2 else 1  # 2: bad arguments or data directory, as it said
            time.sleep(0.05)
        print(f"{project} listening on port {port} (log {log})")
    return 0


# How a server says why it stopped: argparse's "PROG: error: ..." and its log's
# CRITICAL and ERROR lines (docs/protocol.md, exit status).
_FAILURE_LINE = re.compile(r".*(: error: | CRITICAL | ERROR ).*")


def _failure(output: str) -> str:
    """The lines of a server's output that say why it did not start (its usage
    text is not one), or its last line, or that it said nothing."""
    reasons = [m.group(0).strip() for m in _FAILURE_LINE.finditer(output)]
    if reasons:
        return "; ".join(reasons)
    lines = output.strip().splitlines()
    return lines[-1] if lines else "it said nothing, and did not listen in time"


def stop(directory: Path, name: str, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM to each server, then SIGKILL to the process group of any still
    running ``timeout`` seconds later (with ``--sync always``, what it acknowledged
    is on disk either way)."""
    pids = {project: _pid(directory, project) for project in _projects(directory, name)}
    if not pids:
        print(f"no cluster {name!r} to stop in {directory}", file=sys.stderr)
        return 1
    return _stop(directory, pids, timeout)


def _stop(
    directory: Path, pids: dict[str, int | None], timeout: float, *, quiet: bool = False
) -> int:
    for pid in pids.values():
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    failed = False
    for project, pid in pids.items():
        if pid is not None and not _gone_by(pid, deadline):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # each server leads its own session
            if not _gone_by(pid, time.monotonic() + STOP_TIMEOUT):
                print(f"{project} (pid {pid}) did not stop", file=sys.stderr)
                failed = True
                continue  # its pid file stays: it still runs
            print(f"{project} did not stop within {timeout:g} s of SIGTERM: killed")
        elif pid is not None and not quiet:
            print(f"{project} stopped")
        (directory / f"{project}.pid").unlink(missing_ok=True)
    return 1 if failed else 0


def _gone_by(pid: int, deadline: float) -> bool:
    """Waits until process ``pid`` is gone, or ``deadline`` (time.monotonic()) passes."""
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def status(directory: Path, name: str) -> int:
    pids = {project: _pid(directory, project) for project in _projects(directory, name)}
    for project, pid in pids.items():
        print(f"{project}: {'running, pid ' + str(pid) if pid else 'not running'}")
    if not pids:
        print(f"no cluster {name!r} in {directory}")
    return 0 if pids and all(pids.values()) else 1


def _projects(directory: Path, name: str) -> list[str]:
    """The servers of cluster ``name`` with a pid file in ``directory``, by number
    (clusters may share a directory: each one's files are NAME-i.pid)."""
    if not directory.is_dir():
        return []
    server = re.compile(re.escape(name) + r"-([0-9]+)")
    found = [m for path in directory.glob("*.pid") if (m := server.fullmatch(path.stem))]
    return [m.group(0) for m in sorted(found, key=lambda m: int(m.group(1)))]


def _output(log: Path, offset: int) -> str:
    with open(log, "rb") as file:
        file.seek(offset)
        return file.read().decode(errors="replace")


def _index(project: str) -> int:
    return int(project.rsplit("-", 1)[1])


def _pid(directory: Path, project: str) -> int | None:
    """The pid in PROJECT.pid if that process still runs that server."""
    try:
        pid = int((directory / f"{project}.pid").read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if project.encode() in command and alive(pid) else None


def _cluster_name(text: str) -> str:
    # NAME-i names each server's project (and pid and log files): the server's rule.
    if project_problem(f"{text}-{LOCAL_MAX_SERVERS - 1}"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a cluster name: up to 125 letters, digits, '.', '_' and '-', "
            "not starting with '.' or '-'"
        )
    return text


def _server_count(text: str) -> int:
    count = positive_int(text)
    if count > LOCAL_MAX_SERVERS:
        raise argparse.ArgumentTypeError(
            f"{count} servers is more than {LOCAL_MAX_SERVERS} (on one machine)"
        )
    return count


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is for the servers.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog=program_name("python -m hashtable.cluster"),
        description=__doc__.split("\n")[0],
        epilog="Server options go after --, e.g. -- --sync everysec. See docs/cluster.md.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    begin = commands.add_parser("start", help="start NAME-0 ... NAME-(N-1)")
    begin.add_argument("name", type=_cluster_name)
    begin.add_argument("servers", type=_server_count, metavar="N")
    begin.add_argument("--data-dir", type=Path, help="put each server's data in DIR/NAME-i")
    begin.add_argument("--catalog", help="catalogs the servers announce to (HOST[:PORT],...)")
    end = commands.add_parser("stop", help="stop the cluster's servers")
    end.add_argument("name", type=_cluster_name)
    end.add_argument("--timeout", type=positive_seconds, default=STOP_TIMEOUT, metavar="SECONDS",
                     help=f"SIGKILL a server still running this long after SIGTERM "
                          f"(default {STOP_TIMEOUT:g})")  # fmt: skip
    commands.add_parser("status", help="list them").add_argument("name", type=_cluster_name)
    for sub in commands.choices.values():
        sub.add_argument("--dir", type=Path, help="pid files and logs (default ./cluster-run/NAME)")
    args = parser.parse_args(argv)
    directory = args.dir or DEFAULT_DIR / args.name
    if args.command == "start":
        if args.catalog is not None:
            try:  # the servers' own check, before any is started
                catalog_addresses(args.catalog)
            except AddressError as error:
                begin.error(f"--catalog: {error}")
            extra = ["--catalog", args.catalog, *extra]
        return start(args.name, args.servers, directory, args.data_dir, extra)
    if args.command == "stop":
        return stop(directory, args.name, args.timeout)
    return status(directory, args.name)
