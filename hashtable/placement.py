"""Where a key lives in a cluster of N servers with K copies (docs/cluster.md).

    H(key)   = the first 8 bytes of BLAKE2b-512 of the key's UTF-8 bytes, as an
               unsigned big-endian integer
    primary  = H(key) mod N
    replicas = primary, primary+1, ..., primary+K-1  (mod N)

Every process, in every language and every run, computes the same: Python's
``hash()`` is salted per process, so it is never used.
"""

from __future__ import annotations

import hashlib


def key_hash(key: str) -> int:
    """H(key); ``TypeError`` for a string that is not Unicode text (a lone
    surrogate), which no request could carry anyway."""
    try:
        data = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TypeError(f"the key is not valid Unicode text: {exc.reason}") from None
    return int.from_bytes(hashlib.blake2b(data).digest()[:8], "big")


def primary(key: str, servers: int) -> int:
    return key_hash(key) % servers


def replicas(key: str, servers: int, copies: int) -> list[int]:
    """The servers holding ``key``, its primary first."""
    first = key_hash(key) % servers
    return [(first + n) % servers for n in range(copies)]


def covered(answered: set[int], servers: int, copies: int) -> bool:
    """Whether the servers in ``answered`` hold, between them, a copy of every
    key: each primary has at least one of its K servers among them."""
    return all(
        any((first + n) % servers in answered for n in range(copies)) for first in range(servers)
    )
