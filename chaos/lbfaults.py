"""lb: a TS killed or frozen (SIGSTOP) mid-stream.

Three TSs, every name in the tables of two of them, an LS over the three, and
two clients streaming queries without waiting (the second asks, one time in
ten, for a name no TS holds). One TS at a time is frozen for a while and then resumed (its late
answers must not answer anything), or killed and restarted on its port. Since
the other home of every name stays up, each query must get its one right
answer (the table's line, or TIMED OUT for the unknown names) within the LS's
time-out plus slack, never another name's, a stale one, or a time-out.
"""

from __future__ import annotations

import signal
import time

from chaos import dns
from chaos.lab import Lab, Result
from chaos.report import percentile

LS_TIMEOUT = 1.0
SLACK = 3.0  # generous: the machine is shared; a wrong or stale answer is the real failure
FEED_PAUSE = 0.05  # between batches of queries


def run(lab: Lab) -> Result:
    result = Result("lb: TS killed/frozen")
    disruptions = 2 if lab.quick else 6
    tables = dns.write_tables(lab.root)
    tss = [dns.start_ts(lab, table, f"ts{k}") for k, table in enumerate(tables)]
    ls, ls_port = dns.start_ls(lab, [port for _, port in tss], LS_TIMEOUT)
    for process, _ in tss:
        dns.wait_linked(process)
    clients = [dns.LsClient(ls_port) for _ in range(2)]
    windows: list[tuple[str, float, float]] = []
    # The first client asks only for known names; the second mixes in one unknown
    # name in ten (answers keep query order, so its others wait behind the time-outs).
    with dns.Feeder(clients, lab.seed, unknown=(0, 0.1), pause=FEED_PAUSE):
        for n in range(disruptions):
            time.sleep(lab.rng.uniform(0.3, 0.8))
            k = n % len(tss)
            began = time.monotonic()
            if n % 2 == 0:
                what = f"TS {k} frozen"
                tss[k][0].signal(signal.SIGSTOP)
                time.sleep(lab.rng.uniform(1.5, 2.5))  # longer than the LS's time-out
                tss[k][0].signal(signal.SIGCONT)
            else:
                what = f"TS {k} killed and restarted"
                tss[k][0].kill()
                time.sleep(lab.rng.uniform(0.5, 1.5))
                tss[k] = dns.start_ts(lab, tables[k], f"ts{k}", tss[k][1])
                # Before the next disruption, so that every name keeps a live home.
                dns.wait_linked(tss[k][0])
            windows.append((what, began, time.monotonic()))
            result.runs += 1
            lab.say(f"  {what} for {time.monotonic() - began:.1f} s")
        time.sleep(0.5)
    for client in clients:
        client.wait(LS_TIMEOUT + SLACK + 5)
        client.close()
    if not ls.alive():
        result.fail(f"the LS died: {ls.output()[-500:]}")
    _judge(result, clients, windows)
    return result


def _judge(result: Result, clients: list[dns.LsClient], windows) -> None:
    limit = LS_TIMEOUT + SLACK
    found: dict[str, list[str]] = {}
    known, mixed = [], []
    for c, client in enumerate(clients):
        problems, latencies, unanswered = dns.judge(client.answers, limit)
        result.lost = (result.lost or 0) + unanswered
        for sent, problem in problems:
            during = next((w for w, start, end in windows if start <= sent <= end), "between")
            found.setdefault(during, []).append(problem)
        (mixed if c else known).extend(latencies)
    for during, problems in found.items():
        result.fail(f"{during}: {len(problems)} bad answers, e.g. {problems[0]}")
    if result.lost:
        result.fail(f"{result.lost} queries never answered")
    result.figures.append(
        f"lb: {len(known) + len(mixed)} queries answered. Known names only: "
        f"p50 {percentile(known, 50) * 1000:.1f} ms, p99 {percentile(known, 99) * 1000:.1f} ms, "
        f"max {max(known, default=0) * 1000:.1f} ms; with unknown names mixed in (each "
        f"waits {LS_TIMEOUT:g} s, and answers keep query order): "
        f"p50 {percentile(mixed, 50):.2f} s, max {max(mixed, default=0):.2f} s"
    )
