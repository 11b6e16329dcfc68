"""Kept for the tests' imports: the process harness lives in harness.processes."""

from harness.processes import (  # noqa: F401
    CCTOOLS_CATALOG,
    ROOT,
    SHARED,
    Process,
    free_port,
    python_module,
    python_script,
    tcp_open,
    wait_until,
)
