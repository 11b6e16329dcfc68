"""Exponential backoff: the one retry schedule used by every client in the project."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``initial``, ``2*initial``, ``4*initial``, ... capped at ``cap``.

    ``reset()`` after a success starts the schedule over. ``jitter`` spreads the
    delays by up to that fraction so that many clients failing together do not
    come back in lockstep.
    """

    def __init__(self, initial: float = 1.0, cap: float = 30.0, jitter: float = 0.1) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the following one."""
        delay = min(self.cap, self.initial * (2 ** min(self.attempts, 62)))
        self.attempts += 1
        if self.jitter:
            delay *= 1 + random.uniform(-self.jitter, self.jitter)
        return delay

    def reset(self) -> None:
        self.attempts = 0
