"""The shared secret, and everything the project derives from it.

Every service of the project (hash table servers and clients, the cluster, the
herd's links, the TSs of an lb project) trusts exactly the holders of one
secret: a file only its owner can read (``load_secret``). From it come

- a TLS identity: an Ed25519 key derived from the secret (HKDF-SHA256) and a
  self-signed certificate built from it deterministically, so that every
  holder derives the same one. Both ends of a connection present it and trust
  nothing else (``server_context``/``client_context``): a peer that completes
  the handshake proves it holds the secret, the secret itself never crosses the
  network, TLS 1.3 protects the session (encryption and integrity, fresh keys
  per connection, so a recorded handshake cannot be replayed);
- a key that signs catalog records (``sign_record``/``record_signed_by_us``),
  so that a client never even connects to a server whose record it cannot
  verify, however many impostor records a catalog holds.

docs/security.md gives the threat model and the reasons for this design.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import hmac
import os
import secrets
import ssl
import stat
import tempfile
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from netkit.files import PRIVATE_DIR, PRIVATE_FILE

SECRET_ENV = "DHT_SECRET_FILE"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
SIGNATURE_FIELD = "signature"
SIGNED_LIST_FIELD = "signed"
SIGNATURE_VERSION = "v1"
# The record fields a signature covers: who the service is and where it listens.
# The catalog adds address, name and lastheardfrom itself; a server cannot know
# the address a catalog sees, so clients take the TLS handshake as the proof
# that an address is the server's.
SIGNED_FIELDS = ("type", "project", "owner", "port", "starttime", "origin", "auth")
AUTH_SCHEME = "tls-secret-v1"  # the ``auth`` field of a record whose server authenticates


class SecretError(Exception):
    """The secret file is missing, unreadable, malformed or readable by others."""


def default_secret_file() -> Path:
    """``$DHT_SECRET_FILE``, else ``$XDG_CONFIG_HOME/dht/secret``
    (``~/.config/dht/secret``): per user, and the same on every machine that
    shares the home directory."""
    explicit = os.environ.get(SECRET_ENV)
    if explicit:
        return Path(explicit)
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "dht" / "secret"


def load_secret(path: Path | str | None = None, *, create: bool | None = None) -> Secret:
    """The secret in ``path`` (default ``default_secret_file()``).

    With ``create`` (by default: for the default file only, since a mistyped path
    must not silently become a new secret), a missing file is made: 32 random
    bytes, hex, in a file of mode 0600 in a directory of mode 0700 (a race with
    another process creating it is won by one of them; both then read the same
    file). Raises
    ``SecretError`` when the file cannot be used, as ssh does for a key that
    others can read: the message says what is wrong and how to mend it.
    """
    if create is None:
        create = path is None
    path = Path(path) if path is not None else default_secret_file()
    try:
        data = _read_private(path)
    except FileNotFoundError:
        if not create:
            raise SecretError(
                f"no secret file {path}: create one with `dht-secret new {path}`"
            ) from None
        _create(path)
        data = _read_private(path)
    material = data.strip()
    if len(material) < MIN_SECRET_BYTES:
        raise SecretError(
            f"{path} holds {len(material)} bytes; a secret needs at least {MIN_SECRET_BYTES}"
        )
    return Secret(material, path)


def _read_private(path: Path) -> bytes:
    # Every failure but a missing file (which load_secret may create) becomes a
    # SecretError: each service's caller turns that into one line, never a
    # traceback (a directory opens read-only fine, then fails on read).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise SecretError(f"cannot read the secret file {path}: {reason}") from None
    try:
        info = os.fstat(fd)
        # Checked before reading anything: a directory, a FIFO or a device is
        # refused without a read that fails or blocks (hence O_NONBLOCK above).
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SecretError(f"the secret file {path} is {what}")
        if info.st_uid != os.getuid():
            raise SecretError(f"the secret file {path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o077:
            raise SecretError(
                f"the secret file {path} can be read by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); it must be private: chmod 600 {path}"
            )
        data = _read_up_to(fd, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"{path} is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
    return data


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := os.read(fd, limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _create(path: Path) -> None:
    try:
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return  # another process made it first: use theirs
    except OSError as exc:
        raise SecretError(f"cannot create the secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(secrets.token_hex(32).encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())


class Secret:
    """What a secret's holders share. Derivations are computed once, on first use."""

    def __init__(self, material: bytes, path: Path | None = None) -> None:
        self._material = material
        self.path = path

    def __repr__(self) -> str:  # never the material itself
        return f"<Secret {self.fingerprint} from {self.path}>"

    def derive(self, purpose: str, length: int = 32) -> bytes:
        """An independent key for ``purpose`` (HKDF-SHA256 of the secret)."""
        return HKDF(
            algorithm=hashes.SHA256(), length=length, salt=None, info=f"dht {purpose}".encode()
        ).derive(self._material)

    @cached_property
    def fingerprint(self) -> str:
        """A public name for the secret (its identity's public key, hashed): safe to
        log and to compare, to tell which secret two machines hold."""
        public = self._identity_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(public).hexdigest()[:16]

    # ------------------------------------------------------------ TLS

    @cached_property
    def _identity_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.derive("tls identity v1"))

    @cached_property
    def certificate_pem(self) -> bytes:
        """The identity's certificate: the same bytes for every holder (fixed
        fields, and Ed25519 signatures are deterministic)."""
        key = self._identity_key
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dht {self.fingerprint}")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(int.from_bytes(self.derive("tls serial v1", 8), "big") >> 1 or 1)
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, None)
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def server_context(self) -> ssl.SSLContext:
        """For a listening end: TLS 1.3, our identity, and a peer that must show it too."""
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        context.num_tickets = 0  # no resumption: every connection proves the secret afresh
        return context

    def client_context(self) -> ssl.SSLContext:
        """For a connecting end. Host names are not checked: the peer's identity is
        the secret, wherever it runs (its address came from an untrusted catalog)."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        return context

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.certificate_pem.decode())
        key = self._identity_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with _private_file(key + self.certificate_pem) as path:
            context.load_cert_chain(path)
        return context

    # ------------------------------------------------------------ catalog records

    @cached_property
    def _record_key(self) -> bytes:
        return self.derive("catalog records v1")

    def sign_record(
        self, record: dict[str, Any], fields: tuple[str, ...] = SIGNED_FIELDS
    ) -> dict[str, Any]:
        """``record`` with ``auth``, ``signed`` (the names of the fields the signature
        covers: ``fields``, ``auth`` always among them) and ``signature``."""
        covered = tuple(dict.fromkeys((*fields, "auth")))
        signed = {**record, "auth": AUTH_SCHEME, SIGNED_LIST_FIELD: ",".join(covered)}
        signed[SIGNATURE_FIELD] = f"{SIGNATURE_VERSION}:{self._mac(signed, covered)}"
        return signed

    def record_signed_by_us(
        self, record: Mapping[str, Any], required: tuple[str, ...] = ("type", "project", "port")
    ) -> bool:
        """True when ``record`` carries a valid signature made with this secret, over
        (at least) the ``required`` fields. Fields the signature does not cover,
        such as those a catalog adds, are the reader's to distrust."""
        signature = record.get(SIGNATURE_FIELD)
        if not isinstance(signature, str) or not signature.startswith(SIGNATURE_VERSION + ":"):
            return False
        listed = record.get(SIGNED_LIST_FIELD)
        covered = tuple(listed.split(",")) if isinstance(listed, str) else SIGNED_FIELDS
        if not set(required) <= set(covered) or "auth" not in covered:
            return False
        try:
            expected = self._mac(record, covered)
        except TypeError:  # a signed field JSON cannot carry: not ours
            return False
        return hmac.compare_digest(signature[len(SIGNATURE_VERSION) + 1 :], expected)

    def _mac(self, record: Mapping[str, Any], covered: tuple[str, ...]) -> str:
        message = orjson.dumps(
            {"signed": list(covered), **{name: record.get(name) for name in covered}},
            option=orjson.OPT_SORT_KEYS,
        )
        return hmac.new(self._record_key, message, hashlib.sha256).hexdigest()


@contextlib.contextmanager
def _private_file(data: bytes):
    """A path to ``data`` that only this process can read, gone afterwards: an
    anonymous memory file on Linux, else a private temporary file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("dht-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="dht-") as directory:
        path = Path(directory) / "identity.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        yield str(path)


def service_name(kind: str, project: str) -> str:
    """The TLS server name (SNI) a client sends for a ``kind`` of service
    (``hashtable``, ``dns-ts``, ``herd``) of ``project``: a hash, since a project
    name need not be a valid DNS name. A server refuses a handshake that names
    another, so a forged record cannot point a client of one service at the same
    owner's server of another (another project, or another kind)."""
    return hashlib.sha256(f"{kind}:{project}".encode()).hexdigest()[:32] + ".dht"


def require_service_name(context: ssl.SSLContext, kind: str, project: str) -> None:
    """Makes ``context`` (a server's) refuse handshakes that name another service.
    A client that names none (one given an address, not a project) is served."""
    expected = service_name(kind, project)

    def check(_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext):
        if server_name is not None and server_name != expected:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None

    context.sni_callback = check
