"""A cluster's pipeline: ``HashTableClient.pipeline``'s interface over ``ClusterClient``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hashtable.errors import ANSWERS, AuthenticationError, ServiceUnavailable
from hashtable.pipeline import RequestQueue
from hashtable.request import Outcome

if TYPE_CHECKING:
    from .client import ClusterClient


class ClusterPipeline(RequestQueue):
    """``Pipeline``'s interface for a cluster: requests queued, then run by
    ``execute()`` (or at the end of a ``with`` block) one after another, each
    result or answer (``KeyError``, ...) in its ``Reply``. Not sent together
    yet: a cluster pipeline saves no round trips."""

    def __init__(self, client: ClusterClient) -> None:
        super().__init__()
        self._client = client

    def execute(self) -> list[Any]:
        """Runs the queued requests in order and returns ``results()``."""
        queued, self._queued = self._queued, []
        for request, reply in queued:
            try:
                reply.outcome = Outcome.ok(self._client._execute(request))
            except (ServiceUnavailable, AuthenticationError):
                raise  # not an answer: as from Pipeline.execute()
            except ANSWERS as exc:
                reply.error = exc
        return self.results()
