"""``python -m hashtable.cluster start NAME N`` / ``stop NAME`` / ``status NAME``: see local.py."""

import sys

from hashtable.cluster.local import main

if __name__ == "__main__":
    sys.exit(main())
