"""``pip install .`` for real: into a fresh virtual environment, then used from elsewhere.

The project is copied (without .venv, caches or build output) and installed with
``--no-build-isolation --no-deps``: the build backend and the dependencies come from
the test's own environment, reached through a .pth file, so nothing is downloaded.
Every check then runs from a folder outside the repository, so that nothing is
found by accident in the current directory.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import ROOT, Process, wait_until
from harness.services import listening_port

CONSOLE_SCRIPTS = [
    "hashtable-server",
    "hashtable-cli",
    "dht-secret",
    "testperf",
    "catalog-server",
    "catalog-query",
    "lb-ts",
    "lb-ls",
    "lb-client",
    "herd",
    "cluster",
]
TOP_LEVEL_MODULES = ["HashTableClient", "HashTableServer", "HashTable", "TestPerf", "ClusterClient"]
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".*_cache", ".hypothesis", "build", "*.egg-info", "report"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the project installed; returns its bin/."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # pip, setuptools and the dependencies: this environment's, after the new one's own.
    Path(purelib, "outer-environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    done = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=base,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def run(command: list[str | Path], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=30, cwd=cwd, env=env, **kwargs
    )


def test_every_console_script_answers_help_from_elsewhere(installed: Path, tmp_path: Path):
    for script in CONSOLE_SCRIPTS:
        done = run([installed / script, "--help"], cwd=tmp_path)
        assert done.returncode == 0, f"{script}: {done.stdout}{done.stderr}"
        assert done.stdout.startswith(f"usage: {script} "), f"{script}: {done.stdout[:200]}"
        assert "Traceback" not in done.stderr


def test_the_modules_import_from_the_installed_copy(installed: Path, tmp_path: Path):
    modules = [*TOP_LEVEL_MODULES, "catalog", "harness", "hashtable", "herd", "netkit", "perftest"]
    modules.append("lb")
    code = (
        "from HashTableClient import HashTableClient\n"
        "import importlib, lb.cli\n"
        f"for name in {modules!r}:\n"
        "    print(importlib.import_module(name).__file__)\n"
        "print(lb.cli.SAMPLES / 'PROJ2-HNS.txt')\n"
        "import herd.config\n"
        "print(herd.config.DEFAULT_CONFIG)\n"
    )
    done = run([installed / "python", "-c", code], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = [Path(line) for line in done.stdout.split()]
    prefix = installed.parent.resolve()
    for file in files:
        assert file.resolve().is_relative_to(prefix), f"{file} is not the installed copy"
    assert files[-2].is_file(), "lb's sample tables are not installed"
    assert files[-1].is_file(), "herd's default configuration is not installed"


def test_installed_testperf_measures_an_installed_server(installed: Path, tmp_path: Path):
    """The installed programs run for real: TestPerf's client processes are started
    from the installed TestPerf, not the repository's."""
    server = Process(
        [installed / "hashtable-server", "install-test", "--host", "127.0.0.1",
         "--data-dir", str(tmp_path / "data"), "--catalog", "127.0.0.1:9"],
        tmp_path / "server.log",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        port = wait_until(
            lambda: listening_port(server.output()) or not server.alive(), what="the server"
        )
        assert server.alive(), server.output()
        done = run(
            [installed / "testperf", "install-test", "--server", f"127.0.0.1:{port}",
             "--clients", "2", "--stage-seconds", "0.1", "--min-ops", "10", "-q"],
            cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "=== 2 concurrent client(s) ===" in done.stdout
    finally:
        server.stop()


def test_the_installed_cluster_command_starts_and_stops_servers(installed: Path, tmp_path: Path):
    """It finds the installed HashTableServer.py beside the installed package."""
    where = ["--dir", str(tmp_path / "run")]
    started = run(
        [installed / "cluster", "start", "inst", "2", *where, "--data-dir", str(tmp_path / "d"),
         "--catalog", "127.0.0.1:9"],
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.stdout.count("listening on port") == 2
        log = (tmp_path / "run" / "inst-0.log").read_text()
        assert (
            str(installed.parent) in Path(f"/proc/{_pid(tmp_path, 'inst-0')}/cmdline").read_text()
        )
        assert "recovered" in log
    finally:
        stopped = run([installed / "cluster", "stop", "inst", *where], cwd=tmp_path)
    assert stopped.returncode == 0 and stopped.stdout.count("stopped") == 2


def _pid(tmp_path: Path, project: str) -> int:
    return int((tmp_path / "run" / f"{project}.pid").read_text())
