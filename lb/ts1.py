"""The assignment's ts1.py: ``python lb/ts1.py ts1ListenPort`` serves PROJ2-DNSTS1.txt.

The table is PROJ2-DNSTS1.txt in the current directory, as in the assignment, or
else the shipped sample; the TS itself is ``lb.ts`` (its options work here too).
"""

import sys
from pathlib import Path

if not __package__:  # run as a file, as the assignment does: put the repository on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lb.ts import main

if __name__ == "__main__":
    sys.exit(main(default_table="PROJ2-DNSTS1.txt"))
