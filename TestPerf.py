"""TestPerf: measure the hash table service's throughput and latency.

    python TestPerf.py PROJECT                      one client, in this process
    python TestPerf.py PROJECT --clients 4          4 concurrent client processes, and their sum
    python TestPerf.py PROJECT --sweep 1,2,4,8,16   the level-out table, N = 1, 2, 4, ...
    python TestPerf.py NAME N K                     a cluster: servers NAME-0 .. NAME-(N-1),
                                                    K copies of each key (docs/cluster.md)

Copies started by hand at once (``python TestPerf.py X & python TestPerf.py X &
wait``) work too: every client uses keys of its own. The stages are insert,
lookup, scan, query, size and remove; each runs for --stage-seconds (remove
removes what insert inserted). See REPORT.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from catalog.client import CatalogUnavailable, catalog_addresses, matching, query
from hashtable.client import AuthenticationError, ServiceUnavailable
from hashtable.cluster.client import check_shape
from hashtable.names import project_problem
from netkit.addresses import AddressError, parse_address
from netkit.cliargs import (
    choice_list,
    nonnegative_int,
    number_list,
    positive_int,
    positive_seconds,
    program_name,
    writable_file,
)
from netkit.logs import setup_logging
from perftest import report
from perftest.runner import WorkerFailed, run_clients, testperf_path, worker_main
from perftest.workload import STAGES, Workload

# Each client is a Python process (~30 MB); past this a sweep exhausts the machine.
MAX_CLIENTS = 1024
# Past the server's default request limit (8 MiB) inserts fail; well past it, memory.
MAX_VALUE_SIZE = 64 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, then the checks between them. Long because it is the option
    list itself, one ``add_argument`` each, in the order ``--help`` shows them."""
    parser = argparse.ArgumentParser(
        prog=program_name("TestPerf.py"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("project", help="the project name the server announces to the catalog")
    parser.add_argument(
        "servers",
        nargs="?",
        type=positive_int,
        metavar="N",
        help="measure a cluster of N servers, the projects PROJECT-0 .. PROJECT-(N-1)",
    )
    parser.add_argument(
        "copies", nargs="?", type=positive_int, metavar="K", help="the cluster's copies of each key"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--clients",
        type=_client_count,
        default=1,
        metavar="N",
        help=f"concurrent client processes (default 1, at most {MAX_CLIENTS})",
    )
    group.add_argument(
        "--sweep",
        type=number_list(_client_count),
        metavar="N,N,...",
        help="run with each number of clients in turn, e.g. 1,2,4,8",
    )
    parser.add_argument(
        "--stage-seconds",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="how long each timed stage runs (default 1.0)",
    )
    parser.add_argument(
        "--min-ops",
        type=positive_int,
        default=100,
        metavar="N",
        help="fewest operations a stage runs, however long it takes (default 100)",
    )
    parser.add_argument(
        "--value-size",
        type=_value_size,
        default=0,
        metavar="BYTES",
        help=f"padding added to every value (default 0, at most {MAX_VALUE_SIZE})",
    )
    parser.add_argument(
        "--stages",
        type=choice_list(STAGES, "stage"),
        default=list(STAGES),
        metavar="S,S,...",
        help=f"stages to run, in order (default {','.join(STAGES)})",
    )
    parser.add_argument(
        "--catalog",
        metavar="HOSTS",
        help="catalogs to ask (default: $CATALOG_HOST, else localhost:9097)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="talk to this server directly instead of looking the project up",
    )
    parser.add_argument(
        "--give-up-after",
        type=positive_seconds,
        metavar="S",
        help="stop (exit status 1) when no server has answered for S seconds "
        "(default: keep waiting, saying what for)",
    )
    # Checked before the sweep: a path that cannot be written fails at once, not after.
    parser.add_argument(
        "--json", type=writable_file, metavar="FILE", help="save every figure as JSON"
    )
    parser.add_argument(
        "--csv", type=writable_file, metavar="FILE", help="save the summed figures as CSV"
    )
    parser.add_argument(
        "--plot",
        type=writable_file,
        metavar="FILE.png",
        help="save throughput vs clients as a PNG plot",
    )
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="the secret the server holds (default: $DHT_SECRET_FILE, else ~/.config/dht/secret)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="plain text, for a server started with --no-auth"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.servers is not None:
        if args.copies is None:
            parser.error("a cluster needs K too: TestPerf.py NAME N K")
        try:
            check_shape(args.servers, args.copies)
        except ValueError as exc:
            parser.error(str(exc))
        if args.server:
            parser.error("--server talks to one server; a cluster is found through the catalog")
    # A cluster's servers are the projects NAME-0 ... NAME-(N-1): the longest must be one.
    project = args.project if args.servers is None else f"{args.project}-{args.servers - 1}"
    if not args.server and (problem := project_problem(project)):
        parser.error(problem)
    if args.no_auth and args.secret_file is not None:
        parser.error("--no-auth and --secret-file contradict each other")
    if args.catalog:
        try:
            catalog_addresses(args.catalog)
        except AddressError as exc:
            parser.error(f"--catalog: {exc}")
    if args.server:
        try:
            args.server = parse_address(args.server, 0)
        except AddressError as exc:
            parser.error(f"--server: {exc}")
        if args.server[1] == 0:
            parser.error("--server needs HOST:PORT")
    if args.plot and (problem := report.plot_problem(args.plot)):
        parser.error(f"--plot: {problem}")
    args.stages.sort(key=STAGES.index)  # stages always run in their natural order
    if "remove" in args.stages and "insert" not in args.stages:
        parser.error("--stages: remove needs insert before it")
    if any(s in args.stages for s in ("lookup", "scan", "query")) and "insert" not in args.stages:
        parser.error("--stages: lookup, scan and query need insert before them")
    return args


def _client_count(text: str) -> int:
    count = positive_int(text)
    if count > MAX_CLIENTS:
        raise argparse.ArgumentTypeError(f"{count} client processes is more than {MAX_CLIENTS}")
    return count


def _value_size(text: str) -> int:
    size = nonnegative_int(text)
    if size > MAX_VALUE_SIZE:
        raise argparse.ArgumentTypeError(f"{size} bytes of padding is more than {MAX_VALUE_SIZE}")
    return size


def make_client(args: argparse.Namespace, *, member: int | None = None, **options):
    """The client the options ask for; ``member``: one server of the cluster, alone."""
    from HashTableClient import HashTableClient

    options.setdefault("give_up_after", args.give_up_after)
    options.setdefault("secret_file", args.secret_file)
    options.setdefault("auth", not args.no_auth)
    if member is not None:
        return HashTableClient(f"{args.project}-{member}", catalog=args.catalog, **options)
    if args.servers is not None:
        from ClusterClient import ClusterClient

        return ClusterClient(
            args.project, args.servers, args.copies, catalog=args.catalog, **options
        )
    if args.server:
        return HashTableClient.at(*args.server, **options)
    return HashTableClient(args.project, catalog=args.catalog, **options)


def wait_for_service(args: argparse.Namespace) -> None:
    """Returns once the server answers. Until then the client logs, at once and then
    every few seconds (at most every 10), what it waits for (the project and the
    catalogs asked, or the --server address) and why; it raises
    ``ServiceUnavailable`` after --give-up-after. The client processes start only
    then, so that N of them do not all repeat the same complaint.

    For a cluster, each of its N servers must answer first (all within
    --give-up-after): a run on part of a cluster (or with the wrong N) would
    measure waits for the missing servers, and leave its keys where a cluster of
    N puts them."""
    if args.servers is not None:
        deadline = None if args.give_up_after is None else time.monotonic() + args.give_up_after
        for index in range(args.servers):
            left = None if deadline is None else max(0.1, deadline - time.monotonic())
            with make_client(args, member=index, backoff_cap=10.0, give_up_after=left) as server:
                server.size()
        _warn_if_more_servers(args)
    with make_client(args, backoff_cap=10.0) as client:
        client.size()


def _warn_if_more_servers(args: argparse.Namespace) -> None:
    beyond = f"{args.project}-{args.servers}"
    try:
        listed = matching(query(catalogs=catalog_addresses(args.catalog)), "hashtable", beyond)
    except CatalogUnavailable:
        return
    if listed:
        print(f"TestPerf: the catalog also lists {beyond}: if the cluster has more than "
              f"N={args.servers} servers, keys land on the wrong servers", file=sys.stderr)  # fmt: skip


def workload_options(args: argparse.Namespace) -> dict:
    return {
        "stage_seconds": args.stage_seconds,
        "min_ops": args.min_ops,
        "value_size": args.value_size,
    }


def worker_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(testperf_path()), args.project]
    if args.servers is not None:
        command += [str(args.servers), str(args.copies)]
    command += ["--worker", "--quiet"]
    command += ["--stage-seconds", str(args.stage_seconds), "--min-ops", str(args.min_ops)]
    command += ["--value-size", str(args.value_size), "--stages", ",".join(args.stages)]
    if args.catalog:
        command += ["--catalog", args.catalog]
    if args.give_up_after:
        command += ["--give-up-after", str(args.give_up_after)]
    if args.server:
        command += ["--server", f"{args.server[0]}:{args.server[1]}"]
    if args.secret_file:
        command += ["--secret-file", str(args.secret_file)]
    if args.no_auth:
        command += ["--no-auth"]
    return command


def run_in_process(args: argparse.Namespace, progress: report.ProgressLine):
    with make_client(args) as client:
        workload = Workload(client, **workload_options(args))
        progress("warming up")
        workload.warm_up()
        results = []
        for stage in args.stages:
            progress(f"1 client: {stage}")
            results.append(workload.run_stage(stage))
    return [results]


def main(argv: list[str] | None = None) -> int:
    """Runs a worker, one measurement, or a sweep; writes the outputs asked for.
    Long because it reads top to bottom as the run goes; each step is a call."""
    args = parse_args(argv)
    setup_logging(quiet=args.quiet)
    if args.worker:
        try:
            with make_client(args) as client:
                return worker_main(client, args.stages, workload_options(args))
        except ServiceUnavailable as exc:
            print(f"TestPerf client: gave up: {exc}", file=sys.stderr)
            return 1
        except AuthenticationError as exc:
            print(f"TestPerf client: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # the parent went away; it says why itself
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

    info = report.machine()
    meta = {
        "project": args.project,
        "cluster": None if args.servers is None else {"N": args.servers, "K": args.copies},
        "command": " ".join(
            ["python", "TestPerf.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": info,
        "stage_seconds": args.stage_seconds,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    what = args.project
    if args.servers is not None:
        what += f" (cluster: N={args.servers} servers, K={args.copies} copies)"
    print(
        f"TestPerf {what}: {report.machine_line(info)}; stages of {args.stage_seconds:g} s",
        flush=True,
    )
    progress = report.ProgressLine()
    counts = args.sweep or [args.clients]
    sweep = []
    try:
        wait_for_service(args)
        for clients in counts:
            if clients == 1 and not args.sweep:
                results = run_in_process(args, progress)
            else:
                results = run_clients(worker_command(args), clients, args.stages, progress)
            progress.clear()
            print(
                f"\n=== {clients} concurrent client(s) ===\n{report.format_run(results)}",
                flush=True,
            )
            sweep.append((clients, results))
    except WorkerFailed as exc:
        progress.clear()
        print(f"TestPerf: {exc}", file=sys.stderr)
        return 1
    except ServiceUnavailable as exc:
        progress.clear()
        print(f"TestPerf: gave up: {exc}", file=sys.stderr)
        return 1
    except AuthenticationError as exc:
        progress.clear()
        print(f"TestPerf: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.clear()
        print("TestPerf: interrupted", file=sys.stderr)
        return 130
    if args.sweep:
        print("\n" + report.format_sweep(sweep))
    if args.json:
        args.json.write_bytes(report.sweep_json(sweep, meta))
    if args.csv:
        report.write_csv(args.csv, sweep)
    if args.plot:
        report.write_plot(args.plot, sweep, f"TestPerf {args.project} ({info['cores']} cores)")
    errors = sum(r.errors for _, results in sweep for client in results for r in client)
    if errors:
        logging.getLogger("TestPerf").error("%d operations gave a wrong answer", errors)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
