"""``dht-secret``: make, show and rotate the shared secret (docs/security.md).

    dht-secret show [FILE]      where the secret is, its fingerprint, whether it is usable
    dht-secret new FILE         a new random secret in FILE (refuses to overwrite one)
    dht-secret rotate [FILE]    replaces the secret in FILE by a new one, keeping FILE.old

FILE defaults to ``$DHT_SECRET_FILE``, else ``~/.config/dht/secret``. The
fingerprint is safe to show and compare: two machines with the same
fingerprint hold the same secret.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from netkit.cliargs import program_name
from netkit.files import PRIVATE_DIR, PRIVATE_FILE, replace_atomically
from netkit.security import SecretError, default_secret_file, load_secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m netkit.secret_cli"),
        description="Make, show and rotate the secret that the project's services share.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in (
        ("show", "where the secret is and its fingerprint"),
        ("new", "make a new secret file"),
        ("rotate", "replace the secret by a new one (the old one is kept as FILE.old)"),
    ):
        command = commands.add_parser(name, help=summary)
        command.add_argument(
            "file", nargs="?", type=Path, help="default: " + str(default_secret_file())
        )
    args = parser.parse_args(argv)
    path: Path = args.file or default_secret_file()
    try:
        if args.command == "show":
            secret = load_secret(path, create=False)
            print(f"{path}: fingerprint {secret.fingerprint}")
        elif args.command == "new":
            if path.exists():
                parser.exit(1, f"{parser.prog}: {path} exists; `rotate` replaces a secret\n")
            secret = load_secret(path, create=True)
            print(f"{path}: new secret, fingerprint {secret.fingerprint}")
        else:
            old = load_secret(path, create=False)
            _rotate(path)
            print(
                f"{path}: fingerprint {old.fingerprint} -> {load_secret(path).fingerprint} "
                f"(the old secret is in {path}.old); copy it to every machine, then restart "
                "the servers"
            )
    except SecretError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {path}: {exc.strerror or exc}\n")
    return 0


def _rotate(path: Path) -> None:
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    old = path.with_name(path.name + ".old")
    fd = os.open(old, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as file:
        file.write(path.read_bytes())
    replace_atomically(path, secrets.token_hex(32).encode() + b"\n")


if __name__ == "__main__":
    sys.exit(main())
