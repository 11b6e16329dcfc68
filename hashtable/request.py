"""The hash table's requests and outcomes, independent of any wire format.

``hashtable.protocol`` turns wire lines into ``Request`` objects and ``Outcome``
objects into reply lines; ``hashtable.database`` executes requests. Neither
knows about the other's side, and both are testable without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Methods that change the table: logged, made durable, and deduplicated when retried.
MUTATIONS = frozenset({"insert", "remove"})
READS = frozenset({"lookup", "scan", "size", "query"})
# Reads that visit every key: run a slice at a time over a snapshot of the table.
WHOLE_TABLE_READS = frozenset({"scan", "query"})
METHODS = MUTATIONS | READS


class Status(StrEnum):
    OK = "ok"  # the operation succeeded; ``result`` holds its value
    FAILED = "failed"  # the operation failed, e.g. KeyError for a missing key
    INVALID = "invalid"  # the request itself is wrong: not JSON, unknown method, bad regex, ...


@dataclass(slots=True)
class Request:
    """One operation. Only the fields its method uses are set.

    ``client``/``seq`` identify a mutation so that a retried one is applied once:
    ``client`` is an opaque id chosen by the client (e.g. a UUID), ``seq`` grows
    by one per mutation of that client. ``ack`` tells the server that the client
    has the replies of all its mutations numbered ``<= ack``, so it may forget them.
    """

    method: str
    key: str | None = None
    value: Any = None
    regex: str | None = None
    subkey: str | None = None
    subvalue: Any = None
    client: str | None = None
    seq: int | None = None
    ack: int | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to build, on the hot path
class Outcome:
    """What a request produced: a result, a failed operation, or an invalid request."""

    status: Status
    result: Any = None
    error: str | None = None  # for FAILED: the exception's name, e.g. "KeyError"
    message: str | None = None  # for FAILED and INVALID: what went wrong, for people

    @classmethod
    def ok(cls, result: Any = None) -> Outcome:
        return cls(Status.OK, result)

    @classmethod
    def failed(cls, error: str, message: str) -> Outcome:
        return cls(Status.FAILED, None, error, message)

    @classmethod
    def invalid(cls, message: str) -> Outcome:
        return cls(Status.INVALID, None, "InvalidRequest", message)


OK_NONE = Outcome.ok(None)
