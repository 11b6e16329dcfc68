"""The hash table client, under the name the course's programs import.

    from HashTableClient import HashTableClient

See hashtable/client.py for the API and docs/protocol.md for the wire protocol.
"""

from hashtable.client import *  # noqa: F403  (the library's public names, as they are)
from hashtable.client import __all__  # noqa: F401
