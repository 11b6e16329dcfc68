"""--places google against a local stand-in for the Nearby Search API; --catalog discovery."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import ClassVar

import pytest

from harness.herd import Herd, ask
from harness.processes import Process, python_module, wait_until
from harness.services import listening_port
from herd.config import HerdConfig, ServerAddress, write_config

KEY = "test-key-4f1d9c"


class StandIn(http.server.BaseHTTPRequestHandler):
    """Answers like Nearby Search: 30 results, or an error for radius 1000 (1 km);
    for radius 2000 the body comes in two pieces, 0.2 s apart. The odd ones lie a
    degree (111 km) north, outside any radius, as Google may include some."""

    requests: ClassVar[list[dict]] = []

    def do_GET(self):
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        StandIn.requests.append(query)
        if query.get("radius") == "1000":
            self.send_response(500)
            self.end_headers()
            return
        lat, lng = (float(x) for x in query["location"].split(","))
        results = [{"name": f"place {i}", "geometry": {"location": {
                        "lat": lat + (0.001 * i if i % 2 == 0 else 1.0), "lng": lng}}}
                   for i in range(30)]  # fmt: skip
        body = json.dumps({"html_attributions": [], "results": results, "status": "OK"},
                          indent=3).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if query.get("radius") == "2000":
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(0.2)
            body = body[100:]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StandIn.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/maps/api/place/nearbysearch/json"
    finally:
        server.shutdown()
        server.server_close()


def test_google_places_through_aiohttp_with_the_key_never_logged(tmp_path, stand_in):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    herd = Herd(tmp_path, "--places", "google", "--places-url", stand_in,
                "--places-key-file", str(key_file))  # fmt: skip
    try:
        herd.start("Goloman")
        port = herd.port("Goloman")
        at = ask(port, "IAMAT g +34.068930-118.445127 1600000000\n").strip()
        reply = ask(port, "WHATSAT g 10 5\nWHATSAT g 1 5\nWHATSAT g 2 3\n"
                          "WHATSAT g 0 5\nWHATSAT g 10 0\n")  # fmt: skip
        first, rest = reply.split("\n", 1)
        assert first == at
        ok, failed, in_pieces, no_radius, no_items = rest.split("\n\n")[:5]
        for empty in (no_radius, no_items):  # answered without asking Google (it refuses 0)
            assert json.loads(empty.split("\n", 1)[1]) == {
                "html_attributions": [], "results": [], "status": "ZERO_RESULTS"}  # fmt: skip
        assert len(StandIn.requests) == 3
        within = [f"place {i}" for i in range(0, 10, 2)]  # never the odd ones, 111 km away
        assert [r["name"] for r in json.loads(ok)["results"]] == within
        assert json.loads(failed.split("\n", 1)[1])["status"] == "UNKNOWN_ERROR"
        answer = json.loads(in_pieces.split("\n", 1)[1])  # read to its end, not its first piece
        assert [r["name"] for r in answer["results"]] == within[:3]
        assert StandIn.requests[0] == {
            "location": "34.06893,-118.445127",
            "radius": "10000",
            "key": KEY,
        }
    finally:
        herd.stop()
    for path in tmp_path.iterdir():
        if path.suffix in (".log", ".out"):
            assert KEY not in path.read_text(errors="replace"), path


def test_google_without_a_key_is_one_clear_error(tmp_path):
    process = Process(python_module("herd", "Goloman", "--places", "google", "--log-file",
                                    str(tmp_path / "g.log")), tmp_path / "out",
                      env={"GOOGLE_PLACES_API_KEY": ""})  # fmt: skip
    assert process.popen.wait(timeout=30) == 2
    output = process.output()
    assert "needs an API key" in output and "Traceback" not in output
    process.stop()


def test_servers_find_their_neighbours_in_the_catalog(tmp_path: Path, catalog):
    """No ports in the configuration: each server takes free ones and announces them."""
    names = ["Goloman", "Hands", "Holiday"]
    config = HerdConfig(
        "discovered",
        {name: ServerAddress(name, None, None, None) for name in names},
        frozenset({frozenset({"Goloman", "Hands"}), frozenset({"Hands", "Holiday"})}),
    )
    write_config(config, tmp_path / "herd.json")
    processes, ports = {}, {}
    try:
        for name in names:
            processes[name] = Process(
                python_module("herd", name, "--config", str(tmp_path / "herd.json"),
                              "--catalog", catalog.host, "--port", "0", "--peer-port", "0",
                              "--backoff-cap", "0.3", "--log-file", str(tmp_path / f"{name}.log")),
                tmp_path / f"{name}.out",
            )  # fmt: skip
        for name, process in processes.items():
            ports[name] = wait_until(
                lambda process=process: listening_port(process.output()),
                timeout=30,
                what=f"{name} to listen",
            )
        at = ask(ports["Goloman"], "IAMAT found +1+1 1600000000\n").strip()

        def holiday_knows() -> bool:
            return ask(ports["Holiday"], "WHATSAT found 1 1\n").startswith(at)

        wait_until(holiday_knows, timeout=20, what="the flood through discovered links")
        with urllib.request.urlopen(f"{catalog.url}/query.json") as response:
            records = json.loads(response.read())
        herd_records = [r for r in records if r.get("type") == "herd"]
        assert {r["server"] for r in herd_records} == set(names)
        assert all(r["project"] == "discovered" for r in herd_records)
    finally:
        for process in processes.values():
            process.stop()
