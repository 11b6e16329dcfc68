"""The cluster client, under the name the course's programs import.

    from ClusterClient import ClusterClient

    table = ClusterClient("alice", 3, 2)   # servers alice-0 .. alice-2, 2 copies of each key

See hashtable/cluster/client.py for the API and docs/cluster.md for the design.
"""

from hashtable.client import (
    AuthenticationError,
    HashTableError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailable,
)
from hashtable.cluster import ClusterClient, ClusterPipeline, key_hash, replicas

__all__ = [
    "AuthenticationError",
    "ClusterClient",
    "ClusterPipeline",
    "HashTableError",
    "InvalidRequestError",
    "ServerError",
    "ServiceUnavailable",
    "key_hash",
    "replicas",
]
