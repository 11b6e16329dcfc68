"""`make demo`: the whole system, end to end, on this machine, then nothing left running.

Starts a local catalog and a hash table server on free loopback ports, uses the
service through the client library, runs a short TestPerf sweep, starts a small
cluster (three servers, two copies of each key: python -m hashtable.cluster)
and uses it with one server stopped, shows what the catalog lists, resolves the
lb sample through two TS servers and an LS, and stops everything. Pass --keep to leave the services up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process, free_port, python_module, tcp_open, wait_until  # noqa: E402
from harness.services import StartFailed, start_catalog, start_hashtable_server  # noqa: E402
from netkit.cliargs import number_list, positive_int  # noqa: E402

PROJECT = f"demo-{os.getpid()}"


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def use_the_client(catalog: str) -> None:
    os.environ["CATALOG_HOST"] = catalog
    from HashTableClient import HashTableClient

    with HashTableClient(PROJECT) as table:
        table.insert("zebra", {"weight": 100, "legs": 4})
        table.insert("ant", {"weight": 0.001, "legs": 6})
        print("lookup('zebra')            ->", table.lookup("zebra"))
        print("scan('^[az]')              ->", table.scan("^[az]"))
        print("query('legs', 6)           ->", table.query("legs", 6))
        print("size()                     ->", table.size())
        print("remove('ant')              ->", table.remove("ant"))
        try:
            table.lookup("ant")
        except KeyError as missing:
            print("lookup('ant')              -> KeyError", missing)
        table.remove("zebra")


def use_a_cluster(catalog: str, workdir: Path) -> None:
    """A cluster of 3 servers, 2 copies of each key, started with one command; one
    server is stopped and the cluster goes on reading; a write waits for it."""
    from ClusterClient import ClusterClient

    name = f"{PROJECT}-cluster"
    where = ["--dir", str(workdir / "cluster-run")]
    command = [sys.executable, "-m", "hashtable.cluster"]
    print(f"$ python -m hashtable.cluster start {name} 3 --catalog {catalog}", flush=True)
    subprocess.run(
        [*command, "start", name, "3", *where, "--catalog", catalog], cwd=ROOT, check=True
    )
    try:
        options = {"catalog": catalog, "backoff_initial": 0.2, "backoff_cap": 1.0}
        with ClusterClient(name, 3, 2, **options) as table:
            animals = {"zebra": 100, "ant": 0.001, "horse": 500, "lynx": 20, "okapi": 250}
            for animal, weight in animals.items():
                table.insert(animal, {"weight": weight})
            for animal in animals:
                print(f"{animal:8} lives on servers {table.where(animal)}")
            print("size()                     ->", table.size())
            pid_file = workdir / "cluster-run" / f"{name}-1.pid"
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            print(f"(server {name}-1 killed)")
            print("lookup of every animal     ->", [table.lookup(a)["weight"] for a in animals])
            print("size() with one server down ->", table.size())
            print("scan('^[hl]')              ->", sorted(table.scan("^[hl]")))
    finally:
        subprocess.run([*command, "stop", name, *where], cwd=ROOT, check=False)


def run_lb_sample(workdir: Path, logs: Path, started: list[Process]) -> None:
    samples = ROOT / "lb" / "samples"
    ports = [free_port() for _ in range(3)]
    for n, port in enumerate(ports[:2], 1):
        ts = Process(
            python_module("lb.ts", str(port), str(samples / f"PROJ2-DNSTS{n}.txt")),
            logs / f"ts{n}.log",
        )
        started.append(ts)
    ls = Process(
        python_module(
            "lb.ls",
            str(ports[2]),
            "127.0.0.1",
            str(ports[0]),
            "127.0.0.1",
            str(ports[1]),
            "--timeout",
            "2",
        ),
        logs / "ls.log",
    )
    started.append(ls)
    for port in ports:
        wait_until(lambda port=port: tcp_open("127.0.0.1", port), what=f"lb server on {port}")
    resolved = workdir / "RESOLVED.txt"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lb.client",
            "127.0.0.1",
            str(ports[2]),
            "--input",
            str(samples / "PROJ2-HNS.txt"),
            "--output",
            str(resolved),
        ],
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    print(resolved.read_text(), end="")
    same = resolved.read_bytes() == (samples / "RESOLVED.txt").read_bytes()
    print(f"(byte-identical to the assignment's sample RESOLVED.txt: {'yes' if same else 'NO'})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the services running until Ctrl-C"
    )
    parser.add_argument(
        "--sweep",
        type=number_list(positive_int),
        default=[1, 2, 4],
        help="client counts for the TestPerf sweep (default 1,2,4)",
    )
    args = parser.parse_args()
    sweep = ",".join(map(str, args.sweep))

    started: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="dht-demo-") as scratch:
        workdir = Path(scratch)
        logs = workdir / "logs"
        logs.mkdir()
        try:
            banner("starting a local catalog and a hash table server")
            catalog_process, catalog_port = start_catalog(workdir / "catalog-state", logs)
            started.append(catalog_process)
            catalog = f"127.0.0.1:{catalog_port}"
            server, port = start_hashtable_server(PROJECT, workdir / "data", catalog, logs)
            started.append(server)
            print(f"catalog      http://{catalog}/   (the page people browse)")
            print(
                f"server       project {PROJECT!r} on 127.0.0.1:{port}, data in {workdir / 'data'}"
            )

            banner("the client library, finding the server through the catalog")
            use_the_client(catalog)

            banner(f"TestPerf sweep over {sweep} concurrent clients")
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "TestPerf.py"),
                    PROJECT,
                    "--sweep",
                    sweep,
                    "--stage-seconds",
                    "0.5",
                    "--catalog",
                    catalog,
                ],
                cwd=ROOT,
                check=True,
                timeout=600,
            )

            banner("a cluster: 3 servers, 2 copies of each key, one of them killed")
            use_a_cluster(catalog, workdir)

            banner("what the catalog lists (python -m catalog.query)")
            subprocess.run(
                [sys.executable, "-m", "catalog.query", "-c", catalog],
                cwd=ROOT,
                check=False,
                timeout=30,
            )

            banner("lb: the assignment's sample through two TS servers and an LS")
            run_lb_sample(workdir, logs, started)

            if args.keep:
                banner(f"services left running: browse http://{catalog}/ ; Ctrl-C to stop")
                while True:
                    time.sleep(3600)
        except StartFailed as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        except subprocess.CalledProcessError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        finally:
            for process in reversed(started):
                process.stop()
            banner("stopped everything the demo started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
