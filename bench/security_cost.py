"""What authentication costs: secured against plain, side by side in one run.

    python bench/security_cost.py [--seconds S] [--repeat N] [--quick]

- ours: the same server and workloads with TLS (the default) and with
  ``--no-auth``, taking turns: one client's lookups and durable inserts,
  pipelined lookups; the ratio secured/plain (the targets: >= 0.9, 0.9, 0.8);
- the handshake: connections opened, authenticated and closed one after another,
  per connection (the target: under 2 ms), with the client's and the server's
  CPU for each;
- Redis with TLS (``--tls-port``, a throwaway certificate) against Redis without,
  the same workloads, for scale.

bench/vs_redis.py prints this section too (``--security``).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_redis import (
    Target,
    pipelined_lookups_ours,
    pipelined_lookups_redis,
    redis_ops,
    start_ours,
    stop,
    throughput,
)

from harness.processes import free_port, tcp_open, wait_until
from harness.procfs import cpu_seconds
from netkit.cliargs import positive_int, positive_seconds
from netkit.security import load_secret
from netkit.tls import TlsSession, handshake_blocking

CASES = (
    ("1 client, lookups", "lookup", 0.9),
    ("1 client, durable inserts", "insert", 0.9),
    ("pipelined lookups", "pipeline", 0.8),
)


def measure_pair(secured: Target, plain: Target, op: str, seconds: float, repeat: int):
    """Medians of ``repeat`` alternating runs: (secured ops/s, plain ops/s)."""
    run = (
        (lambda t: pipelined_lookups_ours(t, seconds)[0])
        if op == "pipeline"
        else (lambda t: throughput(t, op, 1, seconds)[0])
    )
    results = [(run(secured), run(plain)) for _ in range(repeat)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def handshakes(port: int, server_pid: int, count: int) -> tuple[float, float, float]:
    """Per connection, over ``count`` sequential ones: wall ms, client CPU ms,
    server CPU ms (connect, mutual TLS handshake, close)."""
    context = load_secret().client_context()
    cpu_client, cpu_server = time.process_time(), cpu_seconds(server_pid)
    begin = time.perf_counter()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            handshake_blocking(sock, TlsSession(context, server_side=False))
    wall = time.perf_counter() - begin
    client = time.process_time() - cpu_client
    server = cpu_seconds(server_pid) - cpu_server
    return wall / count * 1000, client / count * 1000, server / count * 1000


def plain_connections(port: int, count: int) -> float:
    begin = time.perf_counter()
    for _ in range(count):
        socket.create_connection(("127.0.0.1", port)).close()
    return (time.perf_counter() - begin) / count * 1000


# ---------------------------------------------------------------- Redis


def _throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "redis.crt", directory / "redis.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, private


def start_redis_tls(workdir: Path, tls: bool) -> Target:
    """Redis with appendfsync always, on a TLS port (client certificates not asked)
    or a plain one."""
    import redis

    port = free_port()
    data = workdir / f"redis-{'tls' if tls else 'plain'}"
    data.mkdir()
    command = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", str(data)]
    command += ["--appendonly", "yes", "--appendfsync", "always"]
    if tls:
        cert, key = _throwaway_certificate(data)
        command += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert)]
        command += ["--tls-key-file", str(key), "--tls-ca-cert-file", str(cert)]
        command += ["--tls-auth-clients", "no"]
    else:
        command += ["--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: tcp_open("127.0.0.1", port), what="redis-server")
    options = {"ssl": True, "ssl_cert_reqs": None} if tls else {}
    return Target(
        f"redis ({'tls' if tls else 'plain'})",
        process,
        partial(redis.Redis, port=port, **options),
        redis_ops(),
        port,
    )


# ---------------------------------------------------------------- report


def report(seconds: float, repeat: int, handshake_count: int) -> None:
    """Prints the whole section."""
    with tempfile.TemporaryDirectory(prefix="security-cost-") as scratch:
        workdir = Path(scratch)
        print(f"authentication's cost: median of {repeat} alternating runs of {seconds:g} s")
        print(f"{'case':<30} {'tls/s':>10} {'plain/s':>10} {'ratio':>6} {'target':>7}")
        secured = start_ours(workdir, "always")
        plain = start_ours(workdir, "always", auth=False)
        try:
            for name, op, target in CASES:
                with_tls, without = measure_pair(secured, plain, op, seconds, repeat)
                print(
                    f"{'ours, ' + name:<30} {with_tls:>10.0f} {without:>10.0f} "
                    f"{with_tls / without:>6.2f} {'>= ' + str(target):>7}",
                    flush=True,
                )
            wall, client_cpu, server_cpu = handshakes(
                secured.port, secured.process.pid, handshake_count
            )
            bare = plain_connections(secured.port, handshake_count)
            print(
                f"a connection with its handshake: {wall:.2f} ms ({bare:.2f} ms for a bare TCP "
                f"connection); CPU {client_cpu:.2f} ms client, {server_cpu:.2f} ms server "
                f"(target: under 2 ms)",
                flush=True,
            )
        finally:
            stop(secured)
            stop(plain)
        if shutil.which("redis-server") is None:
            print("redis: redis-server not installed; skipped")
            return
        try:
            redis_tls = start_redis_tls(workdir, True)
        except TimeoutError:
            print("redis: this redis-server does not listen with --tls-port; skipped")
            return
        redis_plain = start_redis_tls(workdir, False)
        try:
            for name, op, _ in CASES:
                if op == "pipeline":
                    with_tls = statistics.median(
                        pipelined_lookups_redis(redis_tls, seconds)[0] for _ in range(repeat)
                    )
                    without = statistics.median(
                        pipelined_lookups_redis(redis_plain, seconds)[0] for _ in range(repeat)
                    )
                else:
                    with_tls, without = measure_pair(redis_tls, redis_plain, op, seconds, repeat)
                print(
                    f"{'redis, ' + name:<30} {with_tls:>10.0f} {without:>10.0f} "
                    f"{with_tls / without:>6.2f}",
                    flush=True,
                )
        finally:
            stop(redis_tls)
            stop(redis_plain)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=positive_seconds, default=3.0, help="per run (default 3)")
    parser.add_argument("--repeat", type=positive_int, default=3, help="runs each (default 3)")
    parser.add_argument(
        "--handshakes", type=positive_int, default=300, help="connections timed (default 300)"
    )
    parser.add_argument("--quick", action="store_true", help="1 s runs, once each")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat, args.handshakes = 1.0, 1, 100
    report(args.seconds, args.repeat, args.handshakes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
