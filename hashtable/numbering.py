"""A client's exactly-once numbering of its mutations (docs/protocol.md, "Sessions").

Every client of the hash table (``HashTableClient``, its pipelines, the cluster
client's members, the command-line client) numbers its mutations with one of
these, so that a write sent again after a failure is applied once.
"""

from __future__ import annotations

import logging
import uuid

from hashtable.protocol import encode_request
from hashtable.request import MUTATIONS, OK_NONE, Outcome, Request, Status

log = logging.getLogger("hashtable.client")


class Numbering:
    """A client's exactly-once numbering: a random id, mutations numbered 1, 2,
    3, ..., and ``acked``, the highest n such that the replies of all mutations
    <= n are in hand (sent with each mutation, so the server may forget them)."""

    def __init__(self, client_id: str | None = None) -> None:
        self.client_id = client_id or uuid.uuid4().hex
        self.seq = 0
        self.acked = 0

    def encode(self, request: Request) -> bytes:
        """The request's line: a mutation gets the next number (kept through every
        resend, since the line is); a read is encoded as it is. Raises
        ``TypeError`` for a value JSON cannot carry, and then uses no number."""
        if request.method not in MUTATIONS:
            return encode_request(request)
        request.client, request.seq, request.ack = self.client_id, self.seq + 1, self.acked
        data = encode_request(request)
        self.seq += 1
        return data

    def answered(self, request: Request, outcome: Outcome) -> Outcome | None:
        """Takes the reply to ``request`` (replies come in order). Returns the outcome
        to report, or None when the request must be sent again (re-encoded):

        - ``SessionUnknown``: the server knows nothing of this client and did not
          apply it (docs/protocol.md); a new session starts (a new id, from 1);
        - ``OutcomeForgotten``: applied once, its outcome no longer held: for an
          insert that is its outcome (None); a remove's removed value is lost.
        """
        if request.seq is None:
            return outcome
        error = outcome.error if outcome.status is Status.FAILED else None
        if error == "SessionUnknown" and request.client == self.client_id:
            log.warning(
                "the server has forgotten this client (%s); a new session starts", outcome.message
            )
            self.client_id, self.seq, self.acked = uuid.uuid4().hex, 0, 0
            return None
        self.acked = request.seq
        if error == "OutcomeForgotten" and request.method == "insert":
            return OK_NONE
        return outcome
