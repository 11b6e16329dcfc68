"""The server's "listening on" line names addresses a client can connect to
(docs/protocol.md, "The listening line"), and scripts can read the port from it."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from harness.processes import ROOT, free_port, python_script, run_program, wait_until
from harness.services import listening_port
from netkit.interfaces import reachable_addresses
from netkit.listeners import open_listener

DOCUMENTED_AWK = """/^listening on/ {sub(/.*:/, "", $3); print $3}"""


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def assert_all_connectable(addresses: list[str], port: int) -> None:
    """Every listed IP address accepts a connection (the name is checked apart:
    resolving it is up to the system, not the server)."""
    for address in addresses[1:]:
        host, listed_port = split(address)
        assert listed_port == port
        ip = ipaddress.ip_address(host)
        assert not ip.is_unspecified and not ip.is_link_local, address
        with socket.create_connection((host, port), timeout=2):
            pass


def test_bound_to_one_address_it_is_that_address():
    with open_listener("127.0.0.1", 0) as listener:
        assert reachable_addresses(listener) == [f"127.0.0.1:{listener.getsockname()[1]}"]


def test_bound_to_every_interface_it_is_the_host_name_then_addresses_that_answer():
    with open_listener("", 0) as listener:
        port = listener.getsockname()[1]
        addresses = reachable_addresses(listener)
        assert addresses[0] == f"{socket.gethostname()}:{port}"
        assert f"127.0.0.1:{port}" in addresses  # this machine's loopback, last of IPv4
        assert_all_connectable(addresses, port)
        loopback = [ipaddress.ip_address(split(a)[0]).is_loopback for a in addresses[1:]]
        assert loopback == sorted(loopback), "addresses other machines can use come first"


def test_an_ipv4_listener_lists_no_ipv6_address_and_a_v6_only_one_no_ipv4():
    with socket.create_server(("0.0.0.0", 0)) as listener:
        assert all(not split(a)[0].count(":") for a in reachable_addresses(listener))
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        listener.bind(("::", 0))
        listener.listen()
        hosts = [split(a)[0] for a in reachable_addresses(listener)[1:]]
        assert hosts and all(":" in host for host in hosts)


@pytest.mark.parametrize(
    ("line", "port"),
    [
        ("listening on 127.0.0.1:4100", 4100),
        ("listening on [::1]:4101", 4101),  # not port 1: the last colon of the address
        ("listening on vm:4102 192.0.2.2:4102 [fd00::2]:4102 127.0.0.1:4102", 4102),
        ("12:00:01 hashtable.server INFO up\nlistening on [::]:4103\n", 4103),
        ("listening on vm:410", None),  # not a whole line yet: the port may go on
        ("Goloman listening on 127.0.0.1:4104 for clients", 4104),  # a herd server's
    ],
)
def test_the_harness_reads_the_port_of_the_first_address(line: str, port: int | None):
    assert listening_port(line if port is None else line + "\n") == port


def test_the_server_bound_to_every_interface_prints_them_and_the_documented_awk_reads_it(
    spawn, tmp_path: Path
):
    server = spawn(
        python_script(
            "HashTableServer.py",
            "every-interface",
            "--data-dir",
            str(tmp_path / "data"),
            "--catalog",
            f"127.0.0.1:{free_port()}",
            "--quiet",
        ),
        name="server",
    )
    port = wait_until(lambda: listening_port(server.output()) or not server.alive(), what="line")
    assert server.alive(), server.output()
    # Standard error shares the file here: the warning that no catalog answers
    # (no check for another server of the project) comes before the line.
    [line] = [text for text in server.output().splitlines() if text.startswith("listening on")]
    assert line.startswith(f"listening on {socket.gethostname()}:{port} ")
    assert_all_connectable(line.split()[2:], port)
    awk = run_program(["awk", DOCUMENTED_AWK], input=server.output())
    assert awk.stdout == f"{port}\n"
    assert DOCUMENTED_AWK in (ROOT / "docs" / "protocol.md").read_text()
