"""The measurements behind REPORT.md: a TestPerf sweep with durability on and off.

    python scripts/report_sweep.py [--sweep 1,2,4,8,16] [--stage-seconds 1] [--out report/]

For each sync mode (always: every write fsynced before its reply, group-committed;
no: writes left to the OS) it starts a local catalog and a fresh server, runs
``TestPerf.py PROJECT --sweep ...`` and saves the JSON, CSV and PNG plot in --out.
The tables TestPerf prints are what REPORT.md quotes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.services import StartFailed, start_catalog, start_hashtable_server  # noqa: E402
from netkit.cliargs import (  # noqa: E402
    choice_list,
    nonempty_path,
    number_list,
    positive_int,
    positive_seconds,
)

MODES = ("always", "no")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sweep",
        type=number_list(positive_int),
        default=[1, 2, 4, 8, 16],
        help="client counts (default 1,2,4,8,16)",
    )
    parser.add_argument(
        "--stage-seconds",
        type=positive_seconds,
        default=1.0,
        help="seconds per timed stage (default 1)",
    )
    parser.add_argument(
        "--out",
        type=nonempty_path,
        default=ROOT / "report",
        help="where the JSON, CSV and plots go (default report/)",
    )
    parser.add_argument(
        "--modes",
        type=choice_list(("always", "everysec", "no"), "sync mode"),
        default=list(MODES),
        help="sync modes to measure (default always,no)",
    )
    args = parser.parse_args()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out: cannot use {args.out}: {exc.strerror or exc}")
    with tempfile.TemporaryDirectory(prefix="report-sweep-") as scratch:
        workdir = Path(scratch)
        try:
            catalog_process, catalog_port = start_catalog(workdir / "catalog", workdir)
        except StartFailed as exc:
            print(f"report_sweep: {exc}", file=sys.stderr)
            return 1
        catalog = f"127.0.0.1:{catalog_port}"
        try:
            for mode in args.modes:
                project = f"report-sync-{mode}"
                server, _ = start_hashtable_server(
                    project, workdir / project, catalog, workdir, "--sync", mode, "--quiet"
                )
                try:
                    print(f"\n##### sync {mode} #####", flush=True)
                    stem = args.out / f"sweep-sync-{mode}"
                    subprocess.run(
                        [
                            sys.executable,
                            str(ROOT / "TestPerf.py"),
                            project,
                            "--catalog",
                            catalog,
                            "--sweep",
                            ",".join(map(str, args.sweep)),
                            "--stage-seconds",
                            str(args.stage_seconds),
                            "--json",
                            f"{stem}.json",
                            "--csv",
                            f"{stem}.csv",
                            "--plot",
                            f"{stem}.png",
                        ],
                        cwd=ROOT,
                        check=True,
                    )
                finally:
                    server.stop()
        except (StartFailed, subprocess.CalledProcessError) as exc:
            print(f"report_sweep: {exc}", file=sys.stderr)
            return 1
        finally:
            catalog_process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
