"""The event-loop core every server runs on, in the spirit of Redis's ``ae.c``.

A server registers each socket with a handler and the events it wants, changes
that interest as its state changes, sets timers, and adds turn hooks. One turn
of ``EventLoop.run`` is:

1. wait for I/O, exactly until the nearest timer (not at all if a hook said it
   has work left, forever if there is nothing to wait for);
2. call the handler of every ready socket with the events that are ready;
3. run the timers that are due;
4. run the turn hooks (Redis's ``beforeSleep``): the place for work that
   follows a whole turn of input, such as a group commit and the replies that
   must wait for it. A hook returns True when it has work left, which makes the
   next wait zero.

Handlers, timers and hooks run on the loop's one thread and must not block.
``stop()`` may be called from a signal handler: a byte on a socket pair wakes
the loop from its wait.

    loop = EventLoop()
    watch = loop.watch(sock, on_ready, READ)   # on_ready(events)
    watch.set(READ | WRITE)                    # change the interest (0: none, still watched)
    timer = loop.call_later(5.0, on_timeout)   # timer.cancel()
    alarm = loop.alarm(on_deadline)            # alarm.set(when): one timer, re-armed as needed
    loop.add_turn_hook(after_turn)             # after_turn() -> bool: work left?
    loop.run()                                 # until loop.stop()
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

Handler = Callable[[int], None]

# Cancelled timers stay in the heap until they come up; past this share of the
# heap they are swept out at once, so that a server arming and cancelling a
# timer per connection does not grow the heap without bound.
_SWEEP_CANCELLED_ABOVE = 0.5


class Timer:
    """A call due at ``when`` (on the loop's clock); ``cancel()`` stops it."""

    __slots__ = ("callback", "cancelled", "loop", "when")

    def __init__(self, loop: EventLoop, when: float, callback: Callable[[], Any]) -> None:
        self.loop = loop
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.loop._timer_cancelled()


class Alarm:
    """One timer that follows a moving deadline, such as the earliest of a state
    machine's time-outs: ``set(when)`` re-arms it only when ``when`` changes,
    ``set(None)`` disarms it. ``callback()`` runs once the clock reaches it."""

    __slots__ = ("_timer", "callback", "loop", "when")

    def __init__(self, loop: EventLoop, callback: Callable[[], Any]) -> None:
        self.loop = loop
        self.callback = callback
        self.when: float | None = None
        self._timer: Timer | None = None

    def set(self, when: float | None) -> None:
        if when == self.when and (self._timer is None or not self._timer.cancelled):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.when = when
        if when is not None:
            self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self.when = None, None
        self.callback()


def _closed(_events: int) -> None:
    """The handler of a watch that was closed."""


class Watch:
    """A socket (or anything with ``fileno()``) registered with the loop.

    ``events`` is the interest in force. Setting it to 0 keeps the watch but
    stops the selector from reporting the socket (selectors cannot hold a socket
    with no events); ``close()`` forgets it, and must come before the socket's
    own close.
    """

    __slots__ = ("_selector", "events", "fileobj", "handler")

    def __init__(self, selector: selectors.BaseSelector, fileobj: Any, handler: Handler) -> None:
        self._selector = selector
        self.fileobj = fileobj
        self.handler = handler
        self.events = 0

    def set(self, events: int) -> None:
        """Waits for ``events`` (READ, WRITE, both, or 0 for neither) from now on."""
        if events == self.events:
            return
        if not self.events:
            if self.handler is _closed:
                raise RuntimeError("a closed watch cannot be used again: make a new one")
            self._selector.register(self.fileobj, events, self.handler)
        elif not events:
            self._selector.unregister(self.fileobj)
        else:
            self._selector.modify(self.fileobj, events, self.handler)
        self.events = events

    def close(self) -> None:
        """Stops watching; the handler is never called again."""
        if self.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self.fileobj)
        self.events = 0
        # A handler usually refers back to its connection's object, which holds
        # this watch: without this cycle, a closed connection is freed by reference
        # counting alone, even where the garbage collector no longer looks
        # (netkit.memory.freeze_young_survivors).
        self.handler = _closed


class EventLoop:
    """One selector, timers and turn hooks; see the module's docstring."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.time = clock
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # keeps timers of equal time in the order set
        self._cancelled = 0
        self._hooks: list[Callable[[], bool | None]] = []
        self._busy = False  # a hook has work left: the next wait is zero
        self._stopping = False
        # stop() may come from a signal handler while the loop waits: this wakes it.
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self.watch(self._wake_read, self._drain_wakeups, READ)

    # ------------------------------------------------------------ registration

    def watch(self, fileobj: Any, handler: Handler, events: int = READ) -> Watch:
        """Calls ``handler(ready_events)`` whenever ``fileobj`` is ready for ``events``."""
        watch = Watch(self._selector, fileobj, handler)
        watch.set(events)
        return watch

    def call_at(self, when: float, callback: Callable[[], Any]) -> Timer:
        """Calls ``callback()`` once the clock reaches ``when``."""
        timer = Timer(self, when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        return self.call_at(self.time() + delay, callback)

    def alarm(self, callback: Callable[[], Any]) -> Alarm:
        """A re-armable timer for ``callback``; see ``Alarm``."""
        return Alarm(self, callback)

    def add_turn_hook(self, hook: Callable[[], bool | None]) -> None:
        """Runs ``hook()`` at the end of every turn; a true result means work is left."""
        self._hooks.append(hook)

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Runs turns until ``stop()`` (at once if it was called before)."""
        while not self._stopping:
            self.run_once()

    def run_once(self, timeout: float | None = None) -> None:
        """One turn. ``timeout`` caps the wait (None: as long as nothing is due)."""
        wait = self._wait_time()
        if timeout is not None and (wait is None or timeout < wait):
            wait = timeout
        for key, events in self._selector.select(wait):
            key.data(events)
        timers = self._timers
        if timers and timers[0][0] <= self.time():
            self._run_due_timers()
        busy = False
        for hook in self._hooks:
            if hook():
                busy = True
        self._busy = busy

    def stop(self) -> None:
        """Ends ``run()`` after the current turn; safe to call from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    @property
    def stopping(self) -> bool:
        return self._stopping

    def close(self) -> None:
        """Releases the selector and the wake-up sockets (the watched sockets are the caller's)."""
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def seconds_until_next_timer(self) -> float | None:
        """How long until the nearest live timer; None when there is none."""
        timers = self._timers
        if timers and timers[0][2].cancelled:
            self._drop_cancelled_head()
        if not timers:
            return None
        return max(0.0, timers[0][0] - self.time())

    # ------------------------------------------------------------ internals

    def _wait_time(self) -> float | None:
        if self._busy or self._stopping:
            return 0.0
        return self.seconds_until_next_timer()

    def _run_due_timers(self) -> None:
        # Only the timers due when the turn began: one that re-arms itself for
        # "now" runs next turn, after the I/O that came meanwhile.
        now = self.time()
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True  # fired: a late cancel() is a no-op
            timer.callback()

    def _drop_cancelled_head(self) -> None:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._cancelled -= 1

    def _timer_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _SWEEP_CANCELLED_ABOVE * len(self._timers) > 32:
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def _drain_wakeups(self, _events: int) -> None:
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass
