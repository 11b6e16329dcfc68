"""The assignment's client.py, and ``python -m lb.client``: the client (``lb.resolver``).

``python lb/client.py lsHostname lsListenPort`` resolves PROJ2-HNS.txt into RESOLVED.txt.
"""

import sys
from pathlib import Path

if not __package__:  # run as a file, as the assignment does: put the repository on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lb.resolver import main

if __name__ == "__main__":
    sys.exit(main())
