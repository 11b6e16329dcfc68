"""The attacks only a catalog gets (kinds of ``chaos.attacks``, catalog target only):

- pages: 5 browsers reloading the web table as fast as they can, the first page,
  a re-sorted one and a filtered one in turn (the last two need a scan of every
  record);
- idle: 2,000 idle connections held open, each one the catalog closes opened
  again at once (1,100 of them used to make it answer 503 to everyone);
- records: distinct records from one address (127.0.0.2) as fast as it can send
  them, more than the catalog holds (the battery starts it with a small
  ``--max-records``): the well-behaved client's record, from another address,
  must stay listed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from chaos.attacks import Attack

BROWSERS = 5
PAGES = ("/", "/?sort=owner", "/?q=attack")
IDLE_HELD = 2000
FLOOD_SOURCE = "127.0.0.2"


def pages(attack: Attack) -> None:
    threads = [
        threading.Thread(target=_browse, args=(attack, n), daemon=True) for n in range(BROWSERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _browse(attack: Attack, n: int) -> None:
    while attack.running():
        path = PAGES[n % len(PAGES)]
        n += 1
        sock = attack.connect()
        if sock is None:
            time.sleep(0.05)
            continue
        try:
            sock.settimeout(30)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode())
            while sock.recv(1 << 16):
                pass
            attack.count("pages loaded")
        except OSError:
            attack.count("page loads cut off")
        finally:
            sock.close()


def idle(attack: Attack, count: int = IDLE_HELD, on_held: Callable[[], None] | None = None) -> None:
    """Holds ``count`` idle connections, reopening each one the catalog closes;
    ``on_held()`` once they are all open the first time."""
    held: list[socket.socket] = []
    while attack.running():
        while len(held) < count and attack.running():
            sock = attack.connect()
            if sock is None:
                break
            sock.setblocking(False)
            held.append(sock)
        if on_held is not None and len(held) >= count:
            on_held()
            on_held = None
        for sock in list(held):
            try:
                if sock.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                pass
            held.remove(sock)
            sock.close()
            attack.count("idle closed by the catalog")
        time.sleep(0.02)
    for sock in held:
        sock.close()


def records(attack: Attack) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((FLOOD_SOURCE, 0))
        n = 0
        while attack.running():
            data = orjson.dumps({"type": "chaos-distinct", "project": "attack", "port": n % 65536,
                                 "uuid": f"u{n}"})  # fmt: skip
            with contextlib.suppress(OSError):
                sock.sendto(data, ("127.0.0.1", attack.port))
            n += 1
            if n % 100 == 0:
                attack.count("distinct records", 100)
                time.sleep(0.005)  # about 20,000 a second
