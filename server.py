"""``python server.py NAME``: one server of the herd, where the assignment's users look for it.

The same program as ``python -m herd NAME`` (herd.cli); see docs/herd.md.
"""

import sys

from herd.cli import main

if __name__ == "__main__":
    sys.exit(main())
