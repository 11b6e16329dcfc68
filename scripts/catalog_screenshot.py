"""Takes the screenshot of the catalog's page that docs/catalog.md shows.

    .venv/bin/python scripts/catalog_screenshot.py [--out docs/catalog-page.png]

Starts our catalog on loopback, announces a few services like the project's own
(hash table servers, lb TSs, a chirp server) and 230 workers, opens the page in
headless Chromium (harness.browser) and saves what it shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from catalog.client import announce  # noqa: E402
from harness import browser  # noqa: E402
from harness.processes import wait_until  # noqa: E402
from harness.services import start_catalog  # noqa: E402
from netkit.cliargs import writable_file  # noqa: E402

SERVICES = [
    {"type": "hashtable", "project": "alice-a4", "owner": "alice", "port": 9123},
    {"type": "hashtable", "project": "bob-a4", "owner": "bob", "port": 9188},
    {"type": "hashtable", "project": "carol-test", "owner": "carol", "port": 40311},
    {"type": "lb-ts", "project": "dns-lab", "owner": "dave", "port": 50007},
    {"type": "lb-ts", "project": "dns-lab", "owner": "dave", "port": 50008},
    {"type": "chirp", "owner": "erin", "port": 9094, "uuid": "c0ffee"},
    {"type": "hashtable", "project": "<script>alert(1)</script>", "owner": "mallory", "port": 6666},
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=writable_file, default=ROOT / "docs" / "catalog-page.png")
    args = parser.parse_args()
    if browser.missing():
        print(
            f"catalog_screenshot: needs {', '.join(browser.missing())} (make setup)",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_catalog(Path(tmp) / "state", Path(tmp))
        try:
            catalogs = [("127.0.0.1", port)]
            now = time.time()
            for n, service in enumerate(SERVICES):
                announce({**service, "starttime": now - 3600 * (n + 1)}, catalogs)
            for n in range(230):
                announce({"type": "worker", "project": f"batch-{n % 7}", "owner": "wq",
                          "port": 20000 + n}, catalogs)  # fmt: skip

            def all_listed() -> bool:
                reply = requests.get(f"http://127.0.0.1:{port}/query.json", timeout=5)
                return len(orjson.loads(reply.content)) == len(SERVICES) + 230

            wait_until(all_listed, what="the records")
            with browser.headless_chromium(1100, 760) as driver:
                driver.get(f"http://127.0.0.1:{port}/")
                driver.save_screenshot(str(args.out))
        finally:
            process.stop()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
