"""The battery's summary table and its figures, as text."""

from __future__ import annotations

from collections.abc import Sequence

from chaos.lab import Result

HEADINGS = ("scenario", "runs", "failures", "data lost", "verdict")


def format_table(results: Sequence[Result]) -> str:
    rows = [
        (
            r.scenario,
            str(r.runs),
            str(r.failures),
            "-" if r.lost is None else str(r.lost),
            "FAILED" if r.failures else "passed",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [HEADINGS, *rows]) for i in range(len(HEADINGS))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADINGS), rule, *(line(row) for row in rows)])


def percentile(samples: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``samples``; 0 when there are none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]
