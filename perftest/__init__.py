"""TestPerf internals: the workload, latency statistics, the multi-process runner, and reports."""
