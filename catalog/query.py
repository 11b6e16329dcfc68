"""``python -m catalog.query``: browse a catalog from a terminal, as cctools' catalog_query does.

    python -m catalog.query                         every service, as a table
    python -m catalog.query --type hashtable        only hash tables
    python -m catalog.query -w 'owner=="alice"'     any JX expression (see catalog/jx.py)
    python -m catalog.query --json                  the records themselves
    python -m catalog.query -c host:9097,other      which catalogs (default: CATALOG_HOST)

Works against our catalog and a real cctools catalog_server alike. Exit status:
0 on success, 1 if no catalog answered, 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import orjson

from catalog.client import DEFAULT_TIMEOUT, CatalogUnavailable, catalog_addresses, query
from catalog.formats import format_age, one_line, value_text
from catalog.jx import JXSyntaxError, compile_expression
from netkit.addresses import AddressError
from netkit.cliargs import positive_seconds, program_name

COLUMNS = ("type", "name", "port", "owner", "project")
MAX_CELL = 40


def build_expression(where: str | None, type: str | None, project: str | None) -> str | None:
    """One JX expression from ``-w``, ``--type`` and ``--project``; None for "everything"."""
    parts = [f"({where})"] if where else []
    for field, value in (("type", type), ("project", project)):
        if value is not None:
            parts.append(f"{field}=={orjson.dumps(value).decode()}")
    return " and ".join(parts) or None


def _cell(value: Any) -> str:
    text = one_line(value_text(value))
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(records: list[dict[str, Any]], now: float) -> str:
    """The records as aligned columns, sorted by type, project, name and port."""

    def order(record: dict[str, Any]) -> tuple:
        port = record.get("port")
        texts = (value_text(record.get(field, "")) for field in ("type", "project", "name"))
        return (*texts, port if isinstance(port, int) else 0)

    rows = [[name.upper() for name in COLUMNS] + ["AGE"]]
    for record in sorted(records, key=order):
        heard = record.get("lastheardfrom")
        age = format_age(now - heard) if isinstance(heard, int | float) else "?"
        rows.append([_cell(record.get(name, "")) for name in COLUMNS] + [age])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m catalog.query"),
        description="List the services a catalog knows.",
    )
    parser.add_argument(
        "-c",
        "--catalog",
        metavar="HOSTS",
        help="catalogs to ask, host[:port],... (default: $CATALOG_HOST or localhost:9097)",
    )
    parser.add_argument("-w", "--where", metavar="EXPR", help="a JX filter, e.g. 'port>9000'")
    parser.add_argument("--type", help="only services of this type (e.g. hashtable)")
    parser.add_argument("--project", help="only services of this project")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument(
        "-t",
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for each catalog (default {DEFAULT_TIMEOUT:g})",
    )
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The program (also the ``catalog-query`` command): Ctrl-C ends it with status 130,
    quietly, wherever it is (waiting for a catalog, printing)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 130


def _run(argv: list[str] | None) -> int:
    parser, args = parse_args(argv)
    try:
        catalogs = catalog_addresses(args.catalog)
    except AddressError as exc:
        parser.error(f"bad catalog address: {exc}")
    try:
        if args.where is not None:
            compile_expression(args.where)  # its own positions in the message
        expression = build_expression(args.where, args.type, args.project)
        compiled = compile_expression(expression) if expression else None
    except JXSyntaxError as exc:
        parser.error(f"invalid expression: {exc}")
    try:
        records = query(expression, catalogs, args.timeout)
    except CatalogUnavailable as exc:
        print(f"catalog.query: {exc}", file=sys.stderr)
        return 1
    if compiled is not None:
        # Filter here too, as catalog_query does: an old catalog may ignore the filter.
        records = [record for record in records if compiled.matches(record)]
    try:
        if args.json:
            sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            print(table(records, time.time()))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (e.g. head) left; do not complain about it at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
