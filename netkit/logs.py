"""Logging set-up shared by the programs, so that every log line looks alike."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbosity: int = 0, quiet: bool = False) -> None:
    """INFO by default, DEBUG with ``-v``, WARNING with ``--quiet``; to standard error."""
    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


class EventSummary:
    """Repeated events logged as counts, so that a flood cannot flood the log.

    The first ``burst`` events of a kind are logged at once, a line each; the
    next ones within ``interval`` seconds of the first are only counted, and
    ``flush()`` (called by the server's periodic timer) then logs one line per
    kind: "connections refused: 2,314 more in the last 10 s (last: ...)".
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        level: int = logging.WARNING,
        burst: int = 1,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self.burst = burst
        self._logged_at: dict[str, float] = {}  # kind -> when its window began
        self._shown: dict[str, int] = {}  # kind -> lines of its own in this window
        self._counts: dict[str, tuple[int, str]] = {}  # kind -> (count, last detail)

    def note(self, kind: str, detail: str, now: float) -> None:
        """One event; ``kind`` says what happened ("connections refused"), ``detail``
        this occurrence (who, why)."""
        last = self._logged_at.get(kind)
        if last is None or now - last >= self.interval:
            self.flush(now, kinds=(kind,))
            self._logged_at[kind] = now
            self._shown[kind] = 0
        if self._shown[kind] < self.burst and kind not in self._counts:
            self._shown[kind] += 1
            self.logger.log(self.level, "%s: %s", kind, detail)
            return
        count, _ = self._counts.get(kind, (0, ""))
        self._counts[kind] = (count + 1, detail)

    def flush(self, now: float, kinds: tuple[str, ...] | None = None) -> None:
        """Logs the counts gathered since each kind's last line, for the kinds last
        logged ``interval`` ago or more (or for ``kinds``, now)."""
        for kind in list(self._counts) if kinds is None else kinds:
            if kinds is None and now - self._logged_at.get(kind, now) < self.interval:
                continue
            entry = self._counts.pop(kind, None)
            if entry is None:
                continue
            count, detail = entry
            since = now - self._logged_at.get(kind, now)
            self.logger.log(
                self.level,
                "%s: %s more in the last %.0f s (last: %s)",
                kind,
                f"{count:,}",
                max(since, 1.0),
                detail,
            )
            self._logged_at[kind] = now
