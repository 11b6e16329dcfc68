"""The cluster client, under the name the course's programs import.

    from ClusterClient import ClusterClient

    table = ClusterClient("alice", 3, 2)   # servers alice-0 .. alice-2, 2 copies of each key

See hashtable/cluster/client.py for the API and docs/cluster.md for the design.
"""

from hashtable.cluster import *  # noqa: F403  (the package's public names, as they are)
from hashtable.cluster import __all__  # noqa: F401
