"""Catalog down: the catalog stops and comes back while everything uses it.

A hash table server with two writers (found through the catalog), three TSs
and an LS that takes its TSs from the catalog, with a client asking the LS for
known names all along. The catalog goes down in turn:

- stopped (SIGTERM), its records saved: connected clients keep working;
- killed while the hash table server moves to a new port and a new writer
  starts: they must wait, then find the server once the catalog is back;
- killed and started again without its state (a new catalog machine): every
  server must announce itself again, and be found.

The servers here announce every second (--announce-interval 1, the default is
60 s), so that a catalog that missed an announcement hears the next one within
the scenario's time; the mechanism is the same. No acknowledged write may be
lost, no writer may get a wrong answer, every LS query must get its right
answer (a TS the LS forgets answers nothing: its names would time out).
"""

from __future__ import annotations

import signal
import time

from chaos import dns
from chaos.fleet import Writers
from chaos.lab import Catalog, Lab, Result
from chaos.report import percentile

PROJECT = "chaos-catalog"
DNS_PROJECT = "chaos-catalog-dns"
ANNOUNCE = ("--announce-interval", "1")
# The TSs announce less often than the LS times out a query, as with the defaults
# (60 s and 5 s): a TS the LS forgets until its next announcement costs answers.
TS_ANNOUNCE = ("--announce-interval", "4")
OUTAGES = ("stopped", "killed, server moved", "killed, state lost")
DOWN_FOR = (1.0, 2.0)
LS_TIMEOUT = 1.0
SLACK = 3.0
PROBE_PAUSE = 0.1  # between batches of LS queries, all through the scenario
AFTER = 2.0  # seconds the scenario watches the LS after each outage
FIND_TIMEOUT = 30.0  # after the catalog is back: a second's announcement, 1-2-4 s retries


def run(lab: Lab) -> Result:
    result = Result("catalog down")
    outages = OUTAGES if lab.quick else OUTAGES * 2
    catalog = lab.catalog()
    data = lab.path("data")
    server = lab.server(PROJECT, data, catalog.host, *ANNOUNCE)
    writers = Writers(lab, PROJECT, catalog.host)
    writers.start(2)
    tables = dns.write_tables(lab.root)
    tss = [
        dns.start_ts(lab, table, f"ts{k}", None, "--project", DNS_PROJECT, *TS_ANNOUNCE,
                     catalog=catalog.host)[0]
        for k, table in enumerate(tables)
    ]  # fmt: skip
    ls, ls_port = dns.start_ls(
        lab, [], LS_TIMEOUT, "--project", DNS_PROJECT, "--refresh", "1", catalog=catalog.host
    )
    for ts in tss:  # found in the catalog and linked: from now on every name has a home
        dns.wait_linked(ts)
    writers.wait_for_progress()
    probe = dns.LsClient(ls_port)
    found_in = []
    with dns.Feeder([probe], lab.seed, unknown=(0,), pause=PROBE_PAUSE):
        for n, kind in enumerate(outages):
            _stop(catalog, kind)
            if kind == "stopped":
                writers.wait_for_progress()  # connected clients need no catalog
            else:
                server.process.kill()
                server = lab.server(PROJECT, data, catalog.host, *ANNOUNCE)
                writers.start(1)  # a new client, while the catalog is down
            time.sleep(lab.rng.uniform(*DOWN_FOR))
            state = "catalog-state" if kind != "killed, state lost" else f"catalog-state-{n}"
            catalog = lab.catalog(state, catalog.port)
            back = time.monotonic()
            try:
                writers.wait_for_progress(FIND_TIMEOUT)
            except TimeoutError:
                result.fail(f"catalog {kind}: writers found no server in {FIND_TIMEOUT:g} s")
            found_in.append(time.monotonic() - back)
            time.sleep(AFTER)  # the LS's queries go on: its TSs must stay known
            result.runs += 1
            lab.say(f"  catalog {kind}: writers working again in {found_in[-1]:.1f} s")
    probe.wait(LS_TIMEOUT + SLACK + 10)
    if not ls.alive():
        result.fail(f"the LS died: {ls.output()[-500:]}")
    probe.close()
    problems, latencies, unanswered = dns.judge(probe.answers, LS_TIMEOUT + SLACK)
    if problems or unanswered:
        result.fail(
            f"LS: {len(problems)} bad answers, {unanswered} unanswered"
            + (f", e.g. {problems[0][1]}" if problems else "")
        )
    result.lost = (result.lost or 0) + unanswered
    writers.stop(result)
    verdict = writers.check_served(server.port, result, "at the end")  # adds what was lost
    result.figures.append(
        f"catalog down: {len(outages)} outages; writers working again after the catalog came "
        f"back in {min(found_in):.1f} to {max(found_in):.1f} s; {verdict.acknowledged} writes "
        f"acknowledged, {len(verdict.lost)} lost; {len(latencies)} LS answers, p99 "
        f"{percentile(latencies, 99) * 1000:.0f} ms"
    )
    return result


def _stop(catalog: Catalog, kind: str) -> None:
    if kind == "stopped":
        catalog.process.signal(signal.SIGTERM)
    else:
        catalog.process.kill()
    catalog.process.popen.wait(timeout=30)
