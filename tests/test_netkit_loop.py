"""The event-loop core (netkit.loop) and the Acceptor on it, over real sockets."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from netkit.accepting import Acceptor
from netkit.listeners import open_listener
from netkit.loop import READ, WRITE, EventLoop
from tests.server_support import OutOfFiles


@pytest.fixture
def loop():
    event_loop = EventLoop()
    yield event_loop
    event_loop.close()


def test_timers_run_in_time_order_and_cancelled_ones_never(loop):
    ran = []
    loop.call_later(0.03, lambda: ran.append("c"))
    loop.call_later(0.01, lambda: ran.append("a"))
    cancelled = loop.call_later(0.02, lambda: ran.append("never"))
    loop.call_later(0.02, lambda: ran.append("b"))
    cancelled.cancel()
    deadline = time.monotonic() + 2
    while len(ran) < 3 and time.monotonic() < deadline:
        loop.run_once()
    assert ran == ["a", "b", "c"]


def test_the_wait_lasts_exactly_until_the_nearest_timer(loop):
    fired = []
    loop.call_later(0.2, lambda: fired.append(time.monotonic()))
    started = time.monotonic()
    loop.run_once()  # nothing else to do: it sleeps until the timer, then runs it
    assert fired, "one turn should have slept until the timer was due"
    assert 0.19 <= fired[0] - started < 0.35


def test_with_nothing_due_a_turn_waits_for_io_not_a_fixed_interval(loop):
    a, b = socket.socketpair()
    with a, b:
        seen = []
        loop.watch(a, lambda events: seen.append(a.recv(10)), READ)
        threading.Timer(0.3, lambda: b.send(b"hi")).start()
        started = time.monotonic()
        loop.run_once()  # no timeout given: it must wait for the data, however long
        assert seen == [b"hi"]
        assert time.monotonic() - started >= 0.25


def test_a_timer_armed_for_now_by_a_timer_runs_next_turn(loop):
    ran = []

    def first() -> None:
        ran.append("first")
        loop.call_later(0, lambda: ran.append("second"))

    loop.call_later(0, first)
    loop.run_once(timeout=0)
    assert ran == ["first"]
    loop.run_once(timeout=0)
    assert ran == ["first", "second"]


def test_a_busy_hook_makes_the_next_wait_zero(loop):
    calls = []

    def hook() -> bool:
        calls.append(time.monotonic())
        return len(calls) < 3  # work left after the first two turns

    loop.add_turn_hook(hook)
    loop.call_later(5.0, lambda: None)  # an idle loop would sleep 5 s
    loop.run_once(timeout=0)
    started = time.monotonic()
    loop.run_once()  # work left: no wait
    loop.run_once()
    assert len(calls) == 3
    assert time.monotonic() - started < 1.0
    assert loop._wait_time() > 4  # no work left: the next turn would sleep until the timer


def test_interest_changes_and_zero_interest(loop):
    a, b = socket.socketpair()
    with a, b:
        events_seen = []
        watch = loop.watch(a, events_seen.append, WRITE)
        loop.run_once(timeout=1)
        assert events_seen == [WRITE]
        watch.set(0)  # still watched, but reported for nothing
        events_seen.clear()
        b.send(b"x")
        loop.run_once(timeout=0.05)
        assert events_seen == []
        watch.set(READ)
        loop.run_once(timeout=1)
        assert events_seen == [READ]
        watch.close()
        events_seen.clear()
        loop.run_once(timeout=0.05)
        assert events_seen == []


def test_stop_from_a_signal_handler_wakes_a_sleeping_loop(loop):
    previous = signal.signal(signal.SIGALRM, lambda *_: loop.stop())
    try:
        loop.call_later(30, lambda: None)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        started = time.monotonic()
        loop.run()
        assert time.monotonic() - started < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_many_cancelled_timers_do_not_pile_up(loop):
    for _ in range(10_000):
        loop.call_later(60, lambda: None).cancel()
    assert len(loop._timers) < 200


def test_the_acceptor_pauses_when_out_of_descriptors_then_resumes_by_itself(loop):
    plain = open_listener("127.0.0.1", 0)
    listener = OutOfFiles(fileno=plain.detach())
    accepted = []
    acceptor = Acceptor(loop, listener, lambda sock, address: accepted.append(sock), pause=0.2)
    client = socket.create_connection(listener.getsockname())
    try:
        loop.run_once(timeout=1)
        assert acceptor.paused and not accepted
        started = time.monotonic()
        while not accepted and time.monotonic() - started < 3:
            loop.run_once()  # sleeps until the pause ends instead of spinning
        assert accepted and not acceptor.paused
        assert time.monotonic() - started >= 0.15
    finally:
        client.close()
        for sock in accepted:
            sock.close()
        acceptor.close()
        listener.close()


def test_an_alarm_follows_its_deadline(loop):
    fired = []
    alarm = loop.alarm(lambda: fired.append(loop.time()))
    now = loop.time()
    alarm.set(now + 10)
    alarm.set(now + 0.05)  # moved earlier: the old timer is gone
    alarm.set(now + 0.05)  # unchanged: nothing new armed
    assert len([t for t in loop._timers if not t[2].cancelled]) == 1
    while not fired:
        loop.run_once(timeout=1)
    assert fired[0] >= now + 0.05
    alarm.set(None)
    assert loop.seconds_until_next_timer() is None
    alarm.set(loop.time())  # re-armed after firing
    loop.run_once(timeout=1)
    assert len(fired) == 2


def test_a_closed_watch_holds_nothing_alive_even_where_the_collector_does_not_look(loop):
    """A connection's object refers to its watch, whose handler refers back: after
    close(), reference counting alone frees it, so freezing what survives
    (netkit.memory) at run time cannot keep closed connections."""
    import gc
    import weakref
    from functools import partial

    class Peer:
        def ready(self, events: int) -> None:
            pass

    a, b = socket.socketpair()
    with a, b:
        peer = Peer()
        peer.watch = loop.watch(a, lambda events: None, READ)
        peer.watch.handler = partial(Peer.ready, peer)  # as the servers do
        alive = weakref.ref(peer)
        gc.disable()
        try:
            peer.watch.close()
            del peer
            assert alive() is None
        finally:
            gc.enable()
