"""The cluster: one table over N hash table servers, K copies of each key (docs/cluster.md).

``ClusterClient`` (also the top-level ``ClusterClient.py``) is the client;
``python -m hashtable.cluster start NAME N`` runs a local cluster.
"""

from hashtable.cluster.client import ClusterClient
from hashtable.cluster.pipeline import ClusterPipeline
from hashtable.errors import (
    AuthenticationError,
    HashTableError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailable,
)
from hashtable.placement import key_hash, primary, replicas

__all__ = [
    "AuthenticationError",
    "ClusterClient",
    "ClusterPipeline",
    "HashTableError",
    "InvalidRequestError",
    "ServerError",
    "ServiceUnavailable",
    "key_hash",
    "primary",
    "replicas",
]
