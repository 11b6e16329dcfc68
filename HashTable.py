"""The hash table itself, as the course names it: a durable key-value table.

``Database`` keeps the table in memory and every change in a transaction log
(``table.txn``) with periodic checkpoints (``table.ckpt``) in a data directory,
so that an acknowledged change survives a crash at any instant. The server
(``HashTableServer.py``) drives it; programs may also use it directly:

    from HashTable import Database, Request

    with Database("alice-data") as table:
        table.execute(Request("insert", key="zebra", value={"weight": 100}))
        table.commit()                    # durable from here on
        table.execute(Request("lookup", key="zebra")).result   # {'weight': 100}

See docs/storage.md for the files, the durability settings and recovery.
"""

from hashtable.database import Database
from hashtable.request import Outcome, Request, Status
from hashtable.sessions import SessionLimits
from hashtable.storage import DataDirBusy, RecoveryError, StorageFailure

__all__ = [
    "DataDirBusy",
    "Database",
    "Outcome",
    "RecoveryError",
    "Request",
    "SessionLimits",
    "Status",
    "StorageFailure",
]
