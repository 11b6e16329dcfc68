"""The peer link over mutual TLS (netkit.security's contexts in Options.server_ssl/client_ssl),
on both event loops: two servers in one process, real sockets, a flood and a refused stranger.

The links run netkit.tls.TlsSession over plain transports (herd.links); this checks
that on both loops, whatever the peer code does for speed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl

import pytest

from harness.herd import free_config
from herd.clients import ClientProtocol
from herd.links import PeerConnection, keep_dialing
from herd.options import Options
from herd.server import HerdServer
from herd.traffic import TrafficLog
from netkit.security import load_secret

NO_UVLOOP = importlib.util.find_spec("uvloop") is None
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(NO_UVLOOP, reason="no uvloop"))]


async def _wait(condition, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def _refusal(port: int, context: ssl.SSLContext) -> str:
    """How a TLS client with ``context`` is turned away: the error it meets ("" if it
    was let in and sent nothing back)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"HERD 2 herd Goloman Hands 0a - 0\n")
        data = await asyncio.wait_for(reader.read(), 5)
    except (ssl.SSLError, ConnectionError) as error:
        return str(error)
    writer.close()
    return "" if data == b"" else f"let in: {data!r}"


async def _start_pair(tmp_path, options: Options):
    """Goloman and Hands in this loop, listening; Goloman dials Hands."""
    config = free_config(tmp_path / "herd.json")
    loop = asyncio.get_running_loop()
    servers, listeners = {}, []
    for name in ("Goloman", "Hands"):
        server = HerdServer(name, config, options, places=lambda *args: {"results": []},
                            io_log=TrafficLog(tmp_path / f"{name}.log"))  # fmt: skip
        server.bind_loop(loop)
        entry = config.servers[name]
        listeners.append(await loop.create_server(
            lambda s=server: ClientProtocol(s), "127.0.0.1", entry.port))  # fmt: skip
        listeners.append(await loop.create_server(
            lambda s=server: PeerConnection(s), "127.0.0.1", entry.peer_port))  # fmt: skip
        servers[name] = server
    return config, servers, listeners


async def _stop_pair(servers, listeners) -> None:
    for connection in [*servers["Goloman"].links.values(), *servers["Hands"].links.values()]:
        connection.drop("test over")
    for listener in listeners:
        listener.close()
    await asyncio.sleep(0.05)


async def _flood_over_tls(tmp_path, secret, stranger) -> None:
    options = Options(server_ssl=secret.server_context(), client_ssl=secret.client_context())
    config, servers, listeners = await _start_pair(tmp_path, options)
    dialer = asyncio.create_task(keep_dialing(servers["Goloman"], "Hands"))
    try:
        await _wait(lambda: "Hands" in servers["Goloman"].links, "the TLS link")
        link = servers["Goloman"].links["Hands"]
        assert link.tls.version() == "TLSv1.3"
        reader, writer = await asyncio.open_connection("127.0.0.1", config.servers["Goloman"].port)
        writer.write(b"".join(b"IAMAT tls%d +1+1 %d.5\n" % (i, i) for i in range(100)))
        replies = [await reader.readline() for _ in range(100)]
        writer.close()
        # Read-your-update: each reply left once Hands had acknowledged it, over TLS.
        assert all(reply.startswith(b"AT Goloman ") for reply in replies)
        assert servers["Hands"].table.get("tls99").at.line == replies[-1].decode().strip()
        # Someone without the secret does not get past the handshake.
        # It is told why: the alert is sent before the connection closes.
        assert "alert" in await _refusal(config.servers["Hands"].peer_port, stranger)
        assert len(servers["Hands"].links) == 1
    finally:
        dialer.cancel()
        await _stop_pair(servers, listeners)


async def _strangers_hold_no_pending_slot(tmp_path, secret) -> None:
    """More silent strangers than pending slots, held open past the real peer's
    dial: the slots are taken only by connections that proved the secret."""
    options = Options(
        server_ssl=secret.server_context(),
        client_ssl=secret.client_context(),
        max_pending_peers=4,
        handshake_timeout=5.0,
    )
    config, servers, listeners = await _start_pair(tmp_path, options)
    port = config.servers["Hands"].peer_port
    strangers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
    dialer = asyncio.create_task(keep_dialing(servers["Goloman"], "Hands"))
    try:
        # Well within the strangers' handshake time-out: they are still connected.
        await _wait(lambda: "Hands" in servers["Goloman"].links, "the link", timeout=3.0)
        assert not any(reader.at_eof() for reader, _ in strangers)
        # Once their time is up, they are dropped and nothing is left counted.
        # Whatever a stranger is sent before it is dropped, it ends in EOF.
        await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in strangers)), timeout=10.0
        )
        assert servers["Hands"].pending_peers == 0
    finally:
        dialer.cancel()
        for _, writer in strangers:
            writer.close()
        await _stop_pair(servers, listeners)


def _run(coroutine, loop_name: str) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_peer_link_floods_and_acknowledges_over_mutual_tls(tmp_path, loop_name):
    secret = load_secret(tmp_path / "secret", create=True)
    stranger = load_secret(tmp_path / "other", create=True).client_context()
    stranger.verify_mode = ssl.CERT_NONE  # it trusts us; we must not trust it
    _run(_flood_over_tls(tmp_path, secret, stranger), loop_name)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_strangers_without_the_secret_cannot_hold_the_pending_peer_slots(tmp_path, loop_name):
    secret = load_secret(tmp_path / "secret", create=True)
    _run(_strangers_hold_no_pending_slot(tmp_path, secret), loop_name)
