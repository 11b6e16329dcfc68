"""``python -m herd.local start|stop|status``: a whole herd on this machine, in the background.

    python -m herd.local start [--config FILE] [--dir DIR] [-- SERVER OPTIONS...]
    python -m herd.local status [--dir DIR]
    python -m herd.local stop [--dir DIR]

``start`` launches every server of the configuration (the shipped five by
default) as its own process, each with its log (``DIR/NAME.log``), its output
(``DIR/NAME.out``) and its pid (``DIR/NAME.pid``), and returns once each of
them has logged that it listens (exit 1, every server stopped, if one does not). ``stop`` sends each SIGTERM and waits for it to exit. ``DIR``
defaults to ``./herd-run``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from herd.config import ConfigError, load_config

DEFAULT_DIR = Path("herd-run")


def start(config_path: Path | None, directory: Path, extra: list[str]) -> int:
    config = load_config(config_path)
    directory.mkdir(parents=True, exist_ok=True)
    running = {name for name in config.servers if _pid(directory, name) is not None}
    if running:
        print(f"already running: {', '.join(sorted(running))} (stop them first)", file=sys.stderr)
        return 1
    offsets = {}
    for name in config.servers:
        log = directory / f"{name}.log"
        offsets[name] = log.stat().st_size if log.exists() else 0
        args = [sys.executable, "-m", "herd", name, "--log-file", str(log)]
        if config_path is not None:
            args += ["--config", str(config_path)]
        with open(directory / f"{name}.out", "ab") as out:
            process = subprocess.Popen(
                [*args, *extra], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        (directory / f"{name}.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 60
    for name in config.servers:
        # The server's own word that it listens, not a port that answers: another
        # process may hold the port this one failed to take.
        log = directory / f"{name}.log"
        while (address := _listening(name, log, offsets[name])) is None:
            if _pid(directory, name) is None or time.monotonic() > deadline:
                print(f"{name} did not start; see {directory / (name + '.out')}", file=sys.stderr)
                stop(directory)
                return 1
            time.sleep(0.1)
        print(f"{name} listening on {address} (log {log})")
    return 0


def _listening(name: str, log: Path, offset: int) -> str | None:
    """The client address in the server's "NAME listening on HOST:PORT" line, once
    it has logged one after ``offset``."""
    try:
        with open(log, "rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    found = re.search(rf"\b{re.escape(name)} listening on (\S+) for clients", text)
    return found.group(1) if found else None


def stop(directory: Path) -> int:
    for pid_file in sorted(directory.glob("*.pid")):
        pid = _pid(directory, pid_file.stem)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            print(f"{pid_file.stem} stopped")
        pid_file.unlink(missing_ok=True)
    return 0


def status(directory: Path) -> int:
    pids = {path.stem: _pid(directory, path.stem) for path in sorted(directory.glob("*.pid"))}
    for name, pid in pids.items():
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0 if pids and all(pids.values()) else 1


def _pid(directory: Path, name: str) -> int | None:
    """The pid in NAME.pid if that process still runs a herd server."""
    try:
        pid = int((directory / f"{name}.pid").read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"herd" in command and name.encode() in command and _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m herd.local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--config", type=Path, help="the herd's configuration (default: the five)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="logs and pid files")
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is for the servers.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        if args.command == "start":
            return start(args.config, args.dir, extra)
    except ConfigError as error:
        print(f"herd.local: {error}", file=sys.stderr)
        return 2
    return stop(args.dir) if args.command == "stop" else status(args.dir)


if __name__ == "__main__":
    sys.exit(main())
