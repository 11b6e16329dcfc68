"""``python -m herd NAME``: one server of the herd (see herd.cli and docs/herd.md)."""

import sys

from herd.cli import main

sys.exit(main())
