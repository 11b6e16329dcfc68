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
from herd.server import HerdServer, Options
from netkit.security import load_secret

NO_UVLOOP = importlib.util.find_spec("uvloop") is None
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(NO_UVLOOP, reason="no uvloop"))]


async def _wait(condition, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


async def _refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether a TLS client with ``context`` is turned away (an alert or a close)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        writer.write(b"HERD 2 herd Goloman Hands 0a - 0\n")
        data = await asyncio.wait_for(reader.read(), 5)
    except (ssl.SSLError, ConnectionError):
        return True
    writer.close()
    return data == b""


async def _flood_over_tls(tmp_path, secret, stranger) -> None:
    config = free_config(tmp_path / "herd.json")
    loop = asyncio.get_running_loop()
    servers, listeners = {}, []
    options = Options(server_ssl=secret.server_context(), client_ssl=secret.client_context())
    for name in ("Goloman", "Hands"):
        server = HerdServer(name, config, options, places=lambda *args: {"results": []},
                            log_file=tmp_path / f"{name}.log")  # fmt: skip
        server.bind_loop(loop)
        entry = config.servers[name]
        listeners.append(await loop.create_server(
            lambda s=server: ClientProtocol(s), "127.0.0.1", entry.port))  # fmt: skip
        listeners.append(await loop.create_server(
            lambda s=server: PeerConnection(s), "127.0.0.1", entry.peer_port))  # fmt: skip
        servers[name] = server
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
        assert await _refused(config.servers["Hands"].peer_port, stranger)
        assert len(servers["Hands"].links) == 1
    finally:
        dialer.cancel()
        for connection in [*servers["Goloman"].links.values(), *servers["Hands"].links.values()]:
            connection.drop("test over")
        for listener in listeners:
            listener.close()
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_the_peer_link_floods_and_acknowledges_over_mutual_tls(tmp_path, loop_name):
    secret = load_secret(tmp_path / "secret", create=True)
    stranger = load_secret(tmp_path / "other", create=True).client_context()
    stranger.verify_mode = ssl.CERT_NONE  # it trusts us; we must not trust it
    coroutine = _flood_over_tls(tmp_path, secret, stranger)
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)
