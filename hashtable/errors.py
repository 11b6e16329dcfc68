"""What the client raises, and how a reply's ``Outcome`` becomes a result or one of them."""

from __future__ import annotations

from typing import Any

from hashtable.request import Outcome, Status


class HashTableError(Exception):
    """An error reported by the hash table service (other than a missing key)."""


class InvalidRequestError(HashTableError, ValueError):
    """The server refused the request itself: wrong argument type, bad regex, ..."""


class ServerError(HashTableError):
    """The server failed to carry out the operation (see the server's log)."""


class ServiceUnavailable(HashTableError, ConnectionError):
    """Retrying for ``give_up_after`` seconds did not reach the service."""


class AuthenticationError(HashTableError):
    """The server and this client do not share a secret (or one of them does not
    authenticate at all). Never retried: trying again cannot help."""


# Errors a server answers instead of serving a connection at all.
_AUTHENTICATION_ERRORS = ("AuthenticationRequired", "AuthenticationUnsupported")


# What a request can end in besides a result: answers, never retried.
ANSWERS = (KeyError, TypeError, HashTableError)


def result_of(outcome: Outcome, key: str | None = None) -> Any:
    """The result of a request, or the exception it ends in (``KeyError`` naming ``key``)."""
    status = outcome.status
    if status is Status.OK:
        return outcome.result
    if status is Status.FAILED:
        if outcome.error == "KeyError":
            raise KeyError(key)
        if outcome.error in _AUTHENTICATION_ERRORS:
            raise AuthenticationError(outcome.message)
        raise ServerError(f"{outcome.error}: {outcome.message}")
    raise InvalidRequestError(outcome.message)
