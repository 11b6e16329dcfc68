"""Hostile clients against every server: fuzzers and attackers, while a
well-behaved client keeps using it.

For each of the hash table server, the catalog, a TS and the LS: a
well-behaved client (the project's own client where there is one) makes
requests one after the other, first alone, then while a hypothesis fuzzer
(chaos/fuzz.py) and the attackers (chaos/attacks.py: slow-loris, never-reading,
connection flood, oversized messages; for the catalog a datagram flood, page
reloads, 2,000 idle connections and a flood of distinct records from one
address; for the hash table 2,000 idle connections with 200 unfinished
handshakes, and a storm of fake sessions) run as processes of their own; in the
full battery, each server's own attacks once more one at a time. The server's
log growth is reported with each. Then the same for catastrophic regex scans against
the hash table server.

Each server must stay up, every well-behaved request must get its right
answer, the fuzzer's properties must hold, and memory must stay bounded: the
server's peak resident memory (VmHWM) at most PEAK_BOUND_MIB above what it used
before, and what it keeps once the attackers are gone at most KEPT_BOUND_MIB
above that. The well-behaved client's latency is reported alone and under
attack (p50, p99 and their ratios).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from catalog.client import announce, query
from chaos import attacks, dns
from chaos.lab import Lab, Result
from chaos.report import percentile
from chaos.wire import LineConn
from harness.processes import Process, python_module, wait_until
from harness.procfs import memory_kib, reset_peak_memory
from hashtable.client import HashTableClient

# Generous bounds (docs/chaos.md): what the attacks may make a server hold is
# a few buffers per connection (8 MiB lines, 4 MiB of replies), not more.
PEAK_BOUND_MIB = 256
KEPT_BOUND_MIB = 128
LS_TIMEOUT = 0.3  # the fuzzer's unknown names wait this long
PROBE_TIMEOUT = 10.0
# What the well-behaved catalog client looks for, among the attack's 3,000 records
# (on a port of its own: a record with the same address, port and name replaces it).
PROBE_RECORD = {"type": "chaos-probe", "project": "hostile", "port": 65001}
CATALOG_MAX_RECORDS = 10_000
CATALOG_ALONE = [
    ("pages", "page reloads"),
    ("idle", "2,000 idle connections"),
    ("records", "distinct records from one address"),
]
HASHTABLE_ALONE = [
    ("handshakes", "2,000 idle connections and 200 unfinished handshakes"),
    ("sessions", "a storm of fake sessions"),
    ("bombs", "wide JSON bombs"),
]


@dataclass
class Target:
    name: str
    process: Process
    port: int
    probe: Callable[[int], None]  # one well-behaved request; raises if the answer is wrong
    fuzz: list[str]  # extra arguments for chaos.fuzz
    examples: int


def run(lab: Lab) -> Result:
    result = Result("hostile clients", lost=None)
    seconds = 3.0 if lab.quick else 8.0
    # Small enough that the distinct-records flood fills it within the attack.
    catalog = lab.catalog("catalog-state", None, "--max-records", str(CATALOG_MAX_RECORDS))
    server = lab.server("chaos-hostile", lab.path("data"), catalog.host)
    tables = dns.write_tables(lab.root)
    tss = [dns.start_ts(lab, table, f"ts{k}") for k, table in enumerate(tables)]
    ls, ls_port = dns.start_ls(lab, [port for _, port in tss], LS_TIMEOUT)
    for ts, _ in tss:
        dns.wait_linked(ts)
    attacks.fill_catalog(catalog.port)
    announce(PROBE_RECORD, [("127.0.0.1", catalog.port)])
    quick = lab.quick
    targets = [
        Target("hashtable", server.process, server.port, _table_probe(server.port), [],
               80 if quick else 400),
        Target("catalog", catalog.process, catalog.port, _catalog_probe(catalog.port), [],
               30 if quick else 150),
        Target("ts", tss[0][0], tss[0][1], _ts_probe(tss[0][1]), ["--ts", "0"],
               100 if quick else 500),
        Target("ls", ls, ls_port, _ls_probe(ls_port), [], 8 if quick else 40),
    ]  # fmt: skip
    for target in targets:  # every attack kind at once, and the fuzzer
        _attack(lab, result, target, seconds)
    if not quick:  # the servers' own attacks one at a time, each with its figures
        for kind, label in CATALOG_ALONE:
            _attack(lab, result, targets[1], seconds, only=kind, label=f"catalog, {label}")
        for kind, label in HASHTABLE_ALONE:
            _attack(lab, result, targets[0], seconds, only=kind, label=f"hashtable, {label}")
    _attack(lab, result, targets[0], seconds, only="regex", label="hashtable, catastrophic scans")
    return result


def _attack(
    lab: Lab, result: Result, target: Target, seconds: float, only: str = "", label: str = ""
) -> None:
    """Probes ``target`` alone, then under attack (one kind ``only``, or all of
    them with the fuzzer), then after; checks answers, survival and memory."""
    label = label or target.name
    pid = target.process.pid
    reset_peak_memory(pid)
    before, _ = memory_kib(pid)
    log_before = target.process.log_path.stat().st_size
    alone = _probe_for(target, lambda n: n < (100 if lab.quick else 300))
    port = str(target.port)
    kinds = ["--only", only] if only else []
    hostile = [
        lab.start(
            python_module("chaos.attacks", target.name, port, "--seconds", str(seconds), *kinds),
            name=f"attack-{label}",
        )
    ]
    if not only:
        hostile.append(
            lab.start(
                python_module(
                    "chaos.fuzz", target.name, port, "--examples", str(target.examples),
                    "--seed", str(lab.seed), *target.fuzz,
                ),
                name=f"fuzz-{label}",
            )
        )  # fmt: skip
    wait_until(lambda: "attacking" in hostile[0].output(), timeout=30, what="the attack to start")
    deadline = time.monotonic() + seconds + 120
    under = _probe_for(
        target, lambda n: any(p.alive() for p in hostile) and time.monotonic() < deadline
    )
    problems = alone.problems + under.problems
    for process in hostile:
        try:
            code = process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            problems.append(f"{process.log_path.stem} still running after {seconds + 120:g} s")
            process.kill()
            continue
        if code != 0:
            problems.append(f"{process.log_path.stem}: {process.output()[-1500:]}")
    if not target.process.alive():
        problems.append(f"the server died: {target.process.output()[-800:]}")
    else:
        after = _probe_for(target, lambda n: n < 20)
        problems += after.problems
        now, peak = memory_kib(pid)
        grown, kept = (peak - before) / 1024, (now - before) / 1024
        if grown > PEAK_BOUND_MIB or kept > KEPT_BOUND_MIB:
            problems.append(
                f"memory: peak {grown:.0f} MiB above the start (bound {PEAK_BOUND_MIB}), "
                f"{kept:.0f} MiB kept (bound {KEPT_BOUND_MIB})"
            )
        result.figures.append(
            f"{label}: well-behaved client alone -> under attack: p50 {_ms(alone, 50)} -> "
            f"{_ms(under, 50)} ms (x{_ratio(under, alone, 50)}), p99 {_ms(alone, 99)} -> "
            f"{_ms(under, 99)} ms (x{_ratio(under, alone, 99)}), max {_ms(alone, 100)} -> "
            f"{_ms(under, 100)} ms; {len(under.latencies)} requests under attack; "
            f"RSS {before / 1024:.0f} MiB, peak {peak / 1024:.0f}, after {now / 1024:.0f}; "
            f"its log grew {target.process.log_path.stat().st_size - log_before:,} bytes"
        )
    attack_counts = hostile[0].output().strip().splitlines()[-1:] if not hostile[0].alive() else []
    lab.say(f"  {label}: {'; '.join(problems) if problems else 'passed'} {' '.join(attack_counts)}")
    result.runs += 1
    if problems:
        result.fail(f"{label}: " + "; ".join(problems)[:1500])


@dataclass
class Probed:
    latencies: list[float]
    problems: list[str]


def _probe_for(target: Target, more: Callable[[int], bool]) -> Probed:
    """Runs the target's probe while ``more(n)``; a wrong answer or an error stops it."""
    probed = Probed([], [])
    n = 0
    while more(n):
        start = time.perf_counter()
        try:
            target.probe(n)
        except Exception as exc:
            probed.problems.append(f"well-behaved request {n}: {type(exc).__name__}: {exc}"[:300])
            break
        probed.latencies.append(time.perf_counter() - start)
        n += 1
    return probed


def _ms(probed: Probed, p: float) -> str:
    return f"{percentile(probed.latencies, p) * 1000:.2f}"


def _ratio(under: Probed, alone: Probed, p: float) -> str:
    base = percentile(alone.latencies, p)
    return f"{percentile(under.latencies, p) / base:.1f}" if base else "?"


# ---------------------------------------------------------------- well-behaved clients


def _table_probe(port: int) -> Callable[[int], None]:
    client = HashTableClient.at("127.0.0.1", port, timeout=PROBE_TIMEOUT, give_up_after=30)

    def probe(n: int) -> None:
        if n % 2 == 0:
            client.insert("chaos-probe", {"n": n})
        else:
            found = client.lookup("chaos-probe")
            assert found == {"n": n - 1}, f"lookup gave {found}"

    return probe


def _catalog_probe(port: int) -> Callable[[int], None]:
    catalogs = [("127.0.0.1", port)]

    def probe(n: int) -> None:
        found = query(
            f'type=="{PROBE_RECORD["type"]}" && project=="{PROBE_RECORD["project"]}"',
            catalogs,
            timeout=PROBE_TIMEOUT,
        )
        assert len(found) == 1, f"{len(found)} records where 1 was expected"

    return probe


def _ts_probe(port: int) -> Callable[[int], None]:
    conn = LineConn(port, PROBE_TIMEOUT)
    names = [dns.known(n) for n in range(dns.NAMES) if 0 in dns.homes(n)]

    def probe(n: int) -> None:
        name = names[n % len(names)]
        answer = conn.call(f"{n} {name}".encode()).decode()
        assert answer == f"{n} {dns.expected(name)}", answer

    return probe


def _ls_probe(port: int) -> Callable[[int], None]:
    conn = LineConn(port, PROBE_TIMEOUT)

    def probe(n: int) -> None:
        name = dns.known(n % dns.NAMES)
        answer = conn.call(name.encode()).decode()
        assert answer == dns.expected(name), answer

    return probe
