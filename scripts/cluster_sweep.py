"""The cluster's measurements behind REPORT.md: TestPerf sweeps for N=1,K=1; N=3,K=2; N=5,K=3.

    python scripts/cluster_sweep.py [--sweep 1,2,4,8] [--stage-seconds 1] [--out report/]

For each shape it starts a local catalog's worth of fresh servers (``NAME-0`` ..
``NAME-(N-1)``, ``--sync always``, loopback), runs ``TestPerf.py NAME N K
--sweep ...`` (the course's invocation) and saves the JSON, CSV and PNG plot in
--out as ``cluster-N-K.*``. The tables TestPerf prints are what REPORT.md quotes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process  # noqa: E402
from harness.services import StartFailed, start_catalog, start_hashtable_server  # noqa: E402
from netkit.cliargs import nonempty_path, number_list, positive_int, positive_seconds  # noqa: E402

SHAPES = ((1, 1), (3, 2), (5, 3))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep",
        type=number_list(positive_int),
        default=[1, 2, 4, 8],
        help="client counts (default 1,2,4,8)",
    )
    parser.add_argument(
        "--stage-seconds", type=positive_seconds, default=1.0, help="per timed stage (default 1)"
    )
    parser.add_argument(
        "--out", type=nonempty_path, default=ROOT / "report", help="where the files go"
    )
    args = parser.parse_args()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out: cannot use {args.out}: {exc.strerror or exc}")
    sweep = ",".join(map(str, args.sweep))
    with tempfile.TemporaryDirectory(prefix="cluster-sweep-") as scratch:
        work = Path(scratch)
        for servers, copies in SHAPES:
            name = f"sweep{servers}{copies}"
            started: list[Process] = []
            try:
                catalog_process, port = start_catalog(work / f"catalog-{name}", work)
                started.append(catalog_process)
                catalog = f"127.0.0.1:{port}"
                for index in range(servers):
                    project = f"{name}-{index}"
                    process, _ = start_hashtable_server(
                        project, work / project, catalog, work, "--quiet"
                    )
                    started.append(process)
                print(f"\n##### N={servers}, K={copies}: load {os.getloadavg()}", flush=True)
                stem = args.out / f"cluster-{servers}-{copies}"
                subprocess.run(
                    [
                        sys.executable, str(ROOT / "TestPerf.py"), name, str(servers), str(copies),
                        "--sweep", sweep, "--stage-seconds", str(args.stage_seconds),
                        "--catalog", catalog, "--json", f"{stem}.json", "--csv", f"{stem}.csv",
                        "--plot", f"{stem}.png",
                    ],
                    cwd=ROOT,
                    check=True,
                    timeout=3600,
                )  # fmt: skip
            except (StartFailed, subprocess.CalledProcessError) as exc:
                print(f"cluster_sweep: {exc}", file=sys.stderr)
                return 1
            finally:
                for process in reversed(started):
                    process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
