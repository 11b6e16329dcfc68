"""The assignment's ls.py, and ``python -m lb.ls``: the LS (``lb.lserver``).

``python lb/ls.py lsListenPort ts1Hostname ts1ListenPort ts2Hostname ts2ListenPort``
(any number of TS pairs, or ``--project NAME`` to take them from the catalog).
"""

import sys
from pathlib import Path

if not __package__:  # run as a file, as the assignment does: put the repository on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lb.lserver import main

if __name__ == "__main__":
    sys.exit(main())
