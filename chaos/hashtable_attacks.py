"""The attacks only the hash table server gets (kinds of ``chaos.attacks``, hashtable target):

- handshakes: 2,000 connections held open that never say anything, and 200 that
  trickle a TLS handshake a byte at a time and never finish it; each one the
  server closes is opened again at once (10,050 idle ones used to fill every
  slot and lock the secret's holders out);
- sessions: a storm of fake exactly-once sessions, a new client id for every
  insert, as fast as one connection takes them (100,500 of them used to evict
  every real client's session for good). Only a holder of the secret can open a
  session at all, so this attacker holds it: a client fleet gone wrong.
- bombs: wide JSON bombs, inserts of 8 MiB of ``[{},{},...]`` (2.8 million
  objects) pipelined two at a time by a holder of the secret; parsing each one
  used to hold the loop for 0.6 s, and it to hold 250 MB.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import orjson

from netkit.tls import TlsSession, handshake_blocking

if TYPE_CHECKING:
    from chaos.attacks import Attack

IDLE_HELD = 2000
SLOW_HANDSHAKES = 200
HELLO = b"\x16\x03\x01\x02\x00" + b"\x01" * 600  # a handshake record that never ends
STORM_BATCH = 500
BOMB = b'{"method": "insert", "key": "bomb", "value": [' + b"{}," * 2_700_000 + b"{}]}\n"


def handshakes(attack: Attack) -> None:
    idle = [s for s in (attack.connect() for _ in range(IDLE_HELD)) if s]
    slow = [s for s in (attack.connect() for _ in range(SLOW_HANDSHAKES)) if s]
    for sock in idle + slow:
        sock.setblocking(False)
    sent = 0
    while attack.running():
        for held, trickle in ((idle, False), (slow, True)):
            for n, sock in enumerate(held):
                try:
                    if trickle:
                        sock.send(HELLO[sent % len(HELLO) : sent % len(HELLO) + 1])
                    elif sock.recv(1) == b"":
                        raise ConnectionResetError
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    attack.count("held connections closed by the server")
                    sock.close()
                    again = attack.connect()
                    if again is not None:
                        again.setblocking(False)
                        held[n] = again
        sent += 1
        attack.count("handshake bytes trickled", len(slow))
        time.sleep(0.2)
    for sock in idle + slow:
        sock.close()


def sessions(attack: Attack) -> None:
    assert attack.tls is not None
    number = 0
    while attack.running():
        sock = attack.connect()
        if sock is None:
            time.sleep(0.05)
            continue
        with contextlib.closing(sock):
            try:
                tls = TlsSession(attack.tls, server_side=False)
                handshake_blocking(sock, tls)
                while attack.running():
                    lines = b"".join(
                        orjson.dumps(
                            {"method": "insert", "key": f"storm-{n % 1000}", "value": n,
                             "client": f"storm-{n}", "seq": 1}
                        ) + b"\n"
                        for n in range(number, number + STORM_BATCH)
                    )  # fmt: skip
                    number += STORM_BATCH
                    tls.send(lines)
                    sock.sendall(tls.take_output())
                    replies = 0
                    while replies < STORM_BATCH:
                        data = sock.recv(1 << 16)
                        if not data:
                            raise ConnectionResetError
                        replies += tls.feed(data).count(b"\n")
                    attack.count("fake sessions", STORM_BATCH)
            except (TimeoutError, OSError):
                attack.count("storm connections lost")


def bombs(attack: Attack) -> None:
    while attack.running():
        sock = attack.connect(session=True)
        if sock is None:
            time.sleep(0.05)
            continue
        with contextlib.closing(sock):
            try:
                sock.settimeout(30)
                sock.sendall(BOMB + BOMB)
                replies = b""
                while attack.running():
                    data = sock.recv(1 << 16)
                    if not data:
                        raise ConnectionResetError
                    replies += data
                    while b"\n" in replies:
                        reply, replies = replies.split(b"\n", 1)
                        attack.count(f"bombs {orjson.loads(reply)['status']}")
                        sock.sendall(BOMB)
            except (TimeoutError, OSError):
                attack.count("bomb connections lost")
