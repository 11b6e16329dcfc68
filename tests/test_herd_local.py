"""python -m herd.local starts and stops a whole herd; server.py is the assignment's entry point."""

from __future__ import annotations

import signal
import socket

from harness.herd import ask, free_config
from harness.processes import Process, python_module, python_script, tcp_open, wait_until


def test_local_starts_and_stops_a_whole_herd(tmp_path):
    config = free_config(tmp_path / "herd.json")
    run = tmp_path / "run"
    common = ["--config", str(tmp_path / "herd.json"), "--dir", str(run)]
    start = Process(python_module("herd.local", "start", *common), tmp_path / "start.out")
    try:
        assert start.popen.wait(timeout=60) == 0, start.output()
        port = config.servers["Hands"].port
        at = ask(port, "IAMAT local +1+1 1600000000\n").strip()
        welsh = config.servers["Welsh"].port
        wait_until(lambda: ask(welsh, "WHATSAT local 1 1\n").startswith(at), what="the flood")
    finally:
        stop = Process(python_module("herd.local", "stop", *common), tmp_path / "stop.out")
        assert stop.popen.wait(timeout=60) == 0
        stopped = stop.output()
        stop.stop()
        start.stop()
    assert "Welsh stopped" in stopped
    status = Process(python_module("herd.local", "status", *common), tmp_path / "status.out")
    assert status.popen.wait(timeout=30) == 1  # nothing runs any more
    status.stop()


def test_local_start_fails_when_another_process_holds_a_servers_port(tmp_path):
    """A port that answers is not the server: Hands cannot listen, so start says so."""
    config = free_config(tmp_path / "herd.json")
    run = tmp_path / "run"
    common = ["--config", str(tmp_path / "herd.json"), "--dir", str(run)]
    squatter = socket.create_server(("127.0.0.1", config.servers["Hands"].port))
    start = Process(python_module("herd.local", "start", *common), tmp_path / "start.out")
    try:
        assert start.popen.wait(timeout=60) == 1, start.output()
        output = start.output()
        assert "Hands did not start" in output and "Hands listening" not in output
        assert "address already in use" in (run / "Hands.out").read_text().lower()
        status = Process(python_module("herd.local", "status", *common), tmp_path / "status.out")
        assert status.popen.wait(timeout=30) == 1, status.output()  # the others were stopped
        assert "running, pid" not in status.output()
        status.stop()
    finally:
        squatter.close()
        Process(python_module("herd.local", "stop", *common), tmp_path / "stop.out").popen.wait(60)
        start.stop()


def test_server_py_takes_the_name_and_rejects_an_unknown_one(tmp_path):
    process = Process(python_script("server.py", "Nobody", "--log-file", str(tmp_path / "x.log")),
                      tmp_path / "out")  # fmt: skip
    assert process.popen.wait(timeout=30) == 2
    assert "no server 'Nobody'" in process.output() and "Traceback" not in process.output()
    process.stop()


def test_loop_uvloop_without_uvloop_is_one_clear_error(tmp_path):
    (tmp_path / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")  # as if absent
    process = Process(python_script("server.py", "Goloman", "--loop", "uvloop", "--log-file",
                                    str(tmp_path / "x.log")), tmp_path / "out",
                      env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    assert process.popen.wait(timeout=30) == 2
    output = process.output()
    assert "uvloop is not installed" in output and "Traceback" not in output
    process.stop()


def test_a_backoff_that_starts_above_its_cap_is_one_clear_error(tmp_path):
    process = Process(python_script("server.py", "Goloman", "--backoff-initial", "10",
                                    "--backoff-cap", "1", "--log-file", str(tmp_path / "x.log")),
                      tmp_path / "out")  # fmt: skip
    assert process.popen.wait(timeout=30) == 2
    output = process.output()
    assert "--backoff-initial is longer than --backoff-cap" in output and "Traceback" not in output
    process.stop()


def test_a_hangup_stops_a_server_as_sigterm_does_writing_its_log(tmp_path):
    config = free_config(tmp_path / "herd.json")
    log = tmp_path / "Goloman.log"
    process = Process(python_module("herd", "Goloman", "--config", str(tmp_path / "herd.json"),
                                    "--log-file", str(log)), tmp_path / "out")  # fmt: skip
    try:
        wait_until(lambda: tcp_open("127.0.0.1", config.servers["Goloman"].port), what="listening")
        ask(config.servers["Goloman"].port, "IAMAT hup +1+1 1\n")
        process.popen.send_signal(signal.SIGHUP)
        assert process.popen.wait(timeout=30) == 0, process.output()
        text = log.read_text()
        assert "IAMAT hup +1+1 1" in text and text.rstrip().endswith("Goloman stopped")
        # Its neighbours are down: nothing to wait for, and the reply is logged once.
        assert text.count("out client") == 1, text
    finally:
        process.stop()
