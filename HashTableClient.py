"""The hash table client, under the name the course's programs import.

    from HashTableClient import HashTableClient

See hashtable/client.py for the API and docs/protocol.md for the wire protocol.
"""

from hashtable.client import (
    AuthenticationError,
    HashTableClient,
    HashTableError,
    InvalidRequestError,
    Pipeline,
    Reply,
    ServerError,
    ServiceUnavailable,
)

__all__ = [
    "AuthenticationError",
    "HashTableClient",
    "HashTableError",
    "InvalidRequestError",
    "Pipeline",
    "Reply",
    "ServerError",
    "ServiceUnavailable",
]
