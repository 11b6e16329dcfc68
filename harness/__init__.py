"""Starting and stopping the project's programs: used by the tests, the demo, the benchmarks and the chaos battery."""
