"""Pipelines: many requests sent back to back, their replies read as they come.

    with table.pipeline() as p:
        for n in range(1000):
            p.insert(f"k{n}", n)
        found = p.lookup("k7")
    found.result()      # 7
    p.results()         # [None, None, ..., 7]

The requests run when the block ends (or on ``execute()``, which returns the
results), in order. On a failure the unanswered ones are sent again on a new
connection, exactly once for mutations, as for single calls.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Self

from hashtable.errors import ANSWERS, result_of
from hashtable.numbering import Numbering
from hashtable.protocol import ProtocolError, decode_reply
from hashtable.request import Outcome, Request
from hashtable.transport import RETRYABLE, Transport

# Requests encoded and sent at a time: small enough that the server works on one
# chunk while this side encodes the next, large enough to keep system calls few.
PIPELINE_CHUNK = 256
# Requests in flight at most. The server remembers the outcomes of a client's
# unacknowledged mutations, a bounded number of them; this stays well below it.
PIPELINE_WINDOW = 1000


class Reply:
    """The reply to one pipelined request, available once the pipeline has run."""

    __slots__ = ("error", "key", "outcome")

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.outcome: Outcome | None = None
        self.error: Exception | None = None  # the request could not be sent

    def result(self) -> Any:
        """The request's result; raises as the plain method call would."""
        if self.error is not None:
            raise self.error
        if self.outcome is None:
            raise RuntimeError("the pipeline has not run yet")
        return result_of(self.outcome, self.key)

    def exception(self) -> Exception | None:
        """The exception ``result()`` raises (KeyError, ...), or None."""
        try:
            self.result()
        except ANSWERS as exc:
            return exc
        return None


class RequestQueue:
    """The interface of a pipeline: requests queued by the table's method names,
    run by ``execute()`` (at the end of a ``with`` block too), each one's result
    in its ``Reply``. ``Pipeline`` sends them together to one server; the
    cluster's (``hashtable.cluster.pipeline.ClusterPipeline``) runs them in turn."""

    def __init__(self) -> None:
        self._queued: list[tuple[Request, Reply]] = []
        self._replies: list[Reply] = []

    def execute(self) -> list[Any]:
        raise NotImplementedError

    def insert(self, key: str, value: Any) -> Reply:
        """Queues ``insert(key, value)``."""
        return self._add(Request("insert", key, value))

    def lookup(self, key: str) -> Reply:
        """Queues ``lookup(key)``."""
        return self._add(Request("lookup", key))

    def remove(self, key: str) -> Reply:
        """Queues ``remove(key)``."""
        return self._add(Request("remove", key))

    def scan(self, regex: str) -> Reply:
        """Queues ``scan(regex)``."""
        return self._add(Request("scan", regex=regex))

    def size(self) -> Reply:
        """Queues ``size()``."""
        return self._add(Request("size"))

    def query(self, subkey: str, subvalue: Any) -> Reply:
        """Queues ``query(subkey, subvalue)``."""
        return self._add(Request("query", subkey=subkey, subvalue=subvalue))

    def _add(self, request: Request) -> Reply:
        reply = Reply(request.key)
        self._queued.append((request, reply))
        self._replies.append(reply)
        return reply

    def results(self) -> list[Any]:
        """Every request's result in order; a failed one's exception (``KeyError``,
        ``InvalidRequestError``, ...) in its place."""
        results = []
        for reply in self._replies:
            try:
                results.append(reply.result())
            except ANSWERS as exc:
                results.append(exc)
        return results

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.execute()


class Pipeline(RequestQueue):
    """Requests queued now and sent together by ``execute()``; see the module."""

    def __init__(self, transport: Transport, numbering: Numbering) -> None:
        super().__init__()
        self._transport = transport
        self._numbering = numbering

    def execute(self) -> list[Any]:
        """Sends the queued requests, waits for all their replies, and returns
        ``results()``, as redis-py's ``execute()`` does."""
        queued, self._queued = self._queued, []
        if queued:
            self._run(queued)
        return self.results()

    def _run(self, queued: list[tuple[Request, Reply]]) -> None:
        """Keeps up to ``PIPELINE_WINDOW`` requests in flight, sending a chunk and
        then decoding what came back, so that the server has work while this side
        decodes; on a failure resends the unanswered ones. Long because it is a
        hot loop over locals."""
        transport, numbering = self._transport, self._numbering
        lines = transport.lines  # replies received, not yet decoded
        # Requests sent and not answered, oldest first: (line, index in queued).
        unanswered: deque[tuple[bytes, int]] = deque()
        done = encoded = 0  # requests with an outcome / looked at for sending
        total = len(queued)
        out = bytearray()
        failing_since = None
        encode, popleft = numbering.encode, unanswered.popleft
        try:
            while done < total:
                try:
                    room = PIPELINE_WINDOW - (len(unanswered) - len(lines))
                    stop = min(total, encoded + PIPELINE_CHUNK, encoded + room)
                    for index in range(encoded, stop):
                        request, reply = queued[index]
                        if reply.error is not None:
                            continue  # could not be sent, and counted, before a restart
                        try:
                            # A mutation is numbered when first encoded and keeps
                            # its number (and line) through every resend.
                            data = encode(request)
                        except TypeError as exc:  # a value JSON cannot carry: not sent
                            reply.error = exc
                            done += 1
                        else:
                            unanswered.append((data, index))
                            out += data
                    encoded = max(encoded, stop)
                    if not unanswered:
                        continue  # the rest could not be sent: nothing to wait for
                    if not lines:
                        transport.exchange(out)
                        continue
                    if out:
                        transport.exchange(out, wait=False)
                    if len(lines) > len(unanswered):
                        raise ProtocolError("the server sent a reply to no request")
                    for line in lines:
                        index = unanswered[0][1]
                        request, reply = queued[index]
                        outcome = decode_reply(line)  # may raise: then it is resent
                        reply.outcome = numbering.answered(request, outcome)
                        if reply.outcome is None:
                            # The server forgot this client and applied none of its
                            # mutations from here on: everything from here is sent
                            # again, in order, under the new session, on a new
                            # connection (the replies still in flight are dropped).
                            transport.disconnect()
                            unanswered.clear()
                            out.clear()
                            encoded = index
                            break
                        popleft()
                        done += 1
                    lines.clear()
                except RETRYABLE as exc:
                    failing_since = transport.failed(exc, failing_since)
                    # Sent again on the new connection.
                    out[:] = b"".join(data for data, _ in unanswered)
        except BaseException:
            transport.disconnect()  # replies may still come: not for the next call
            raise
        finally:
            transport.end_exchange()
        if failing_since is not None:
            transport.backoff.reset()
