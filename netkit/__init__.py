"""The project's small networking toolkit.

One implementation of each mechanism that several programs need:
``framing`` (newline-delimited messages), ``connection`` (a buffered,
non-blocking peer for ``selectors`` loops), ``backoff`` (the retry schedule),
``addresses`` (``host[:port]`` parsing), and ``logs`` (log set-up for the programs).
"""
