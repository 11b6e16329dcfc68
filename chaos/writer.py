"""A writer process for the crash battery: mutates its own keys and logs every one.

    python -m chaos.writer PROJECT --ledger FILE --name w3 [--keys 50] [--seed S] [--cluster N K]

It uses HashTableClient (with ``--cluster``, a ClusterClient of the servers
PROJECT-0 .. PROJECT-(N-1)) as any program would (found through the catalog,
retrying invisibly), one operation at a time: inserts, removes of keys it holds,
lookups. Before sending a mutation it appends a ``send`` line to its ledger, and
an ``ack`` line once the reply is in (chaos/ledger.py), each written straight to
the file so that a reader sees it at once. Every reply is checked against the
writer's own model of its keys: a remove that finds nothing where the model
holds a value (a retry applied twice, a lost write) is logged as ``wrong``.

It runs until SIGTERM or SIGINT, then finishes the operation under way and
exits 0, printing what it did.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

from chaos.ledger import Mutation, ack_line, send_line, wrong_line
from hashtable.client import HashTableClient
from hashtable.cluster import ClusterClient
from netkit.logs import setup_logging

REMOVE_SHARE = 0.15
LOOKUP_SHARE = 0.10


class Writer:
    """The writer's loop body (``step``), its model of its keys and its ledger."""

    def __init__(self, client: Any, ledger_fd: int, name: str, keys: int, seed: int, pad: int):
        self.client = client
        self.fd = ledger_fd
        self.name = name
        self.keys = [f"{name}-k{n}" for n in range(keys)]
        self.rng = random.Random(f"{seed}:{name}")
        self.pad = pad
        self.model: dict[str, Any] = {}  # what the table holds for our keys
        self.index = 0  # mutations sent
        self.reads = 0
        self.wrong = 0

    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < LOOKUP_SHARE:
            self._lookup(rng.choice(self.keys))
        elif roll < LOOKUP_SHARE + REMOVE_SHARE and self.model:
            self._mutate(Mutation(self.index, "remove", rng.choice(sorted(self.model))))
        else:
            value = {"w": self.name, "i": self.index, "pad": "x" * rng.randrange(self.pad + 1)}
            self._mutate(Mutation(self.index, "insert", rng.choice(self.keys), value))

    def _mutate(self, mutation: Mutation) -> None:
        os.write(self.fd, send_line(mutation))
        self.index += 1
        expected = self.model.get(mutation.key)
        if mutation.method == "insert":
            self.client.insert(mutation.key, mutation.value)
            self.model[mutation.key] = mutation.value
        else:
            try:
                removed = self.client.remove(mutation.key)
            except KeyError:
                removed = None
            self.model.pop(mutation.key, None)
            if removed != expected:
                self._wrong(
                    mutation.index,
                    f"remove {mutation.key} gave {_brief(removed)}, not {_brief(expected)}",
                )
        os.write(self.fd, ack_line(mutation))

    def _lookup(self, key: str) -> None:
        self.reads += 1
        try:
            found = self.client.lookup(key)
        except KeyError:
            found = None
        if found != self.model.get(key):
            self._wrong(
                self.index, f"lookup {key} gave {_brief(found)}, not {_brief(self.model.get(key))}"
            )
            self.model[key] = found  # carry on from what the table says

    def _wrong(self, index: int, detail: str) -> None:
        self.wrong += 1
        os.write(self.fd, wrong_line(index, detail))


def _brief(value: Any) -> str:
    """A value named by the mutation that wrote it (its padding says nothing)."""
    if isinstance(value, dict) and "i" in value:
        return f"the value of op {value['i']}"
    return "nothing" if value is None else repr(value)[:80]


def _client(args: argparse.Namespace) -> Any:
    if args.cluster is None:
        return HashTableClient(args.project, catalog=args.catalog)
    # A killed server is tried again within a second: its writes wait for it.
    return ClusterClient(
        args.project, *args.cluster, catalog=args.catalog, backoff_initial=0.1, backoff_cap=1.0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the writer's name; prefixes its keys")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pad", type=int, default=800, help="most padding bytes in a value")
    parser.add_argument("--catalog", help="catalogs (default: $CATALOG_HOST)")
    parser.add_argument(
        "--cluster", type=int, nargs=2, metavar=("N", "K"), help="write to a cluster"
    )
    args = parser.parse_args(argv)
    setup_logging(0, quiet=True)  # the client's retry warnings still show
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: stopping.append(signum))
    fd = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with _client(args) as client:
        writer = Writer(client, fd, args.name, args.keys, args.seed, args.pad)
        while not stopping:
            writer.step()
    os.close(fd)
    print(
        f"writer {args.name}: {writer.index} mutations, {writer.reads} lookups, {writer.wrong} wrong"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
