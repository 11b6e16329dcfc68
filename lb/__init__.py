"""DNS-style lookups fanned out across TS servers (Rutgers CS 352 project 2, extended).

A client sends host names to the load-balancing server (LS); the LS asks every
top-level server (TS) at once and relays the first answer, or ``NAME - TIMED OUT``.

Modules, one job each:
``protocol`` (wire formats and host-name checks, sans-IO), ``table`` (TS table
files), ``balancer`` (the LS's matching of queries to answers and time-outs,
sans-IO), ``ts`` (the TS server), ``tslink`` (the LS's reconnecting link to one
TS), ``discovery`` (TS records in the catalog), ``lserver`` (the LS server),
``resolver`` (the client), ``netio`` and ``cli`` (helpers shared by the programs).
``ts1``, ``ts2``, ``ls`` and ``client`` are the assignment's own command lines.
See docs/lb.md.
"""
