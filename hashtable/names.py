"""What may name a project: the server's rule, which clients check too."""

from __future__ import annotations

import re

# It names the data directory (hence no '/', and no leading '.' or '-') and goes
# into catalog records and log lines.
_PROJECT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def project_problem(name: object) -> str | None:
    """Why ``name`` cannot name a project, or None if it can."""
    if type(name) is str and _PROJECT_NAME.fullmatch(name):
        return None
    return (
        f"{name!r} cannot name a project: use up to 128 letters, digits, '.', '_' and '-', "
        "not starting with '.' or '-' (it names the data directory)"
    )
