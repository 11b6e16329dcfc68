"""TestPerf's output: text tables, JSON, CSV and the throughput plot."""

from __future__ import annotations

import csv
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from perftest.runner import ClientResults
from perftest.stats import StageSum


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
    }


def machine_line(info: dict[str, Any]) -> str:
    return f"{info['cores']} cores ({info['cpu']}), {info['implementation']} {info['python']}, {info['system']}"


def stage_sums(results: Sequence[ClientResults]) -> list[StageSum]:
    stages = [r.stage for r in results[0]]
    return [StageSum(stage, [client[i] for client in results]) for i, stage in enumerate(stages)]


_STAGE_HEADER = f"{'stage':<8} {'ops':>9} {'ops/s':>10} {'mean us':>9} {'p50 us':>9} {'p99 us':>9} {'max us':>9} {'cpu':>5} {'errors':>6}"


def _stage_row(stage: str, ops: int, throughput: float, latency, cpu: float, errors: int) -> str:
    return (
        f"{stage:<8} {ops:>9} {throughput:>10.0f} {latency.mean_us:>9.1f} "
        f"{latency.percentile_us(50):>9.1f} {latency.percentile_us(99):>9.1f} "
        f"{latency.max_ns / 1000:>9.1f} {cpu:>5.0%} {errors:>6}"
    )


def format_run(results: Sequence[ClientResults]) -> str:
    """Each client's figures, then the sum (throughput) and pooled latencies."""
    lines = []
    for n, client in enumerate(results, 1):
        lines += [f"client {n}:", _STAGE_HEADER]
        lines += [
            _stage_row(r.stage, r.ops, r.throughput, r.latency, r.client_cpu_share, r.errors)
            for r in client
        ]
        lines.append("")
    if len(results) > 1:
        lines += [
            f"sum of {len(results)} concurrent clients (throughputs summed, latencies pooled):",
            _STAGE_HEADER,
        ]
        lines += [
            _stage_row(s.stage, s.ops, s.throughput, s.latency, s.client_cpu_share, s.errors)
            for s in stage_sums(results)
        ]
        lines.append("")
    lines.append("cpu: the share of the stage's wall time the client spent on its own CPU")
    return "\n".join(lines)


def format_sweep(sweep: Sequence[tuple[int, Sequence[ClientResults]]]) -> str:
    """The level-out table: summed throughput per stage for each number of clients."""
    stages = [r.stage for r in sweep[0][1][0]]
    header = f"{'clients':>7} " + " ".join(f"{s:>10}" for s in stages)
    lines = ["summed throughput (ops/s):", header]
    per_client = ["mean throughput per client (ops/s):", header]
    latency = ["p99 latency, pooled (us):", header]
    for clients, results in sweep:
        sums = stage_sums(results)
        lines.append(f"{clients:>7} " + " ".join(f"{s.throughput:>10.0f}" for s in sums))
        per_client.append(
            f"{clients:>7} " + " ".join(f"{s.mean_client_throughput:>10.0f}" for s in sums)
        )
        latency.append(
            f"{clients:>7} " + " ".join(f"{s.latency.percentile_us(99):>10.0f}" for s in sums)
        )
    return "\n".join([*lines, "", *per_client, "", *latency, "", format_clients(sweep)])


def format_clients(sweep: Sequence[tuple[int, Sequence[ClientResults]]]) -> str:
    """The raw data: every client's throughput per stage, for each number of clients."""
    stages = [r.stage for r in sweep[0][1][0]]
    lines = [
        "each client's throughput (ops/s):",
        f"{'clients':>7} {'client':>6} " + " ".join(f"{s:>10}" for s in stages),
    ]
    for clients, results in sweep:
        for n, client in enumerate(results, 1):
            lines.append(
                f"{clients:>7} {n:>6} " + " ".join(f"{r.throughput:>10.0f}" for r in client)
            )
    return "\n".join(lines)


def sweep_json(sweep: Sequence[tuple[int, Sequence[ClientResults]]], meta: dict[str, Any]) -> bytes:
    runs = []
    for clients, results in sweep:
        runs.append(
            {
                "clients": clients,
                "per_client": [[r.to_json() for r in client] for client in results],
                "sum": [_summary(s) for s in stage_sums(results)],
            }
        )
    return orjson.dumps({**meta, "runs": runs}, option=orjson.OPT_INDENT_2)


def _summary(s: StageSum) -> dict[str, Any]:
    return {
        "stage": s.stage,
        "ops": s.ops,
        "ops_per_s": round(s.throughput, 1),
        "mean_client_ops_per_s": round(s.mean_client_throughput, 1),
        "mean_us": round(s.latency.mean_us, 1),
        "p50_us": round(s.latency.percentile_us(50), 1),
        "p99_us": round(s.latency.percentile_us(99), 1),
        "client_cpu_share": round(s.client_cpu_share, 3),
        "errors": s.errors,
    }


def write_csv(path: Path, sweep: Sequence[tuple[int, Sequence[ClientResults]]]) -> None:
    with path.open("w", newline="") as out:
        writer = None
        for clients, results in sweep:
            for s in stage_sums(results):
                row = {"clients": clients, **_summary(s)}
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)


def plot_problem(path: Path) -> str | None:
    """Why ``write_plot`` could not write ``path`` (checked before the sweep), or None."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return "needs matplotlib: pip install 'dht[plot]' (make setup installs it)"
    kind = path.suffix.lower().removeprefix(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if kind and kind not in formats:
        return f"matplotlib cannot write .{kind} files; name a .png, .svg or .pdf file"
    return None


def write_plot(
    path: Path, sweep: Sequence[tuple[int, Sequence[ClientResults]]], title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [n for n, _ in sweep]
    sums = [stage_sums(results) for _, results in sweep]
    figure, axes = plt.subplots(figsize=(8, 5))
    for i, stage in enumerate(s.stage for s in sums[0]):
        axes.plot(clients, [row[i].throughput for row in sums], marker="o", label=stage)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xticks(clients, [str(n) for n in clients])
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("summed throughput (ops/s)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


class ProgressLine:
    """One status line rewritten in place on a terminal; silent when output is piped."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.width = 0

    def __call__(self, text: str) -> None:
        if self.enabled:
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def clear(self) -> None:
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
