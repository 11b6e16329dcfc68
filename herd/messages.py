"""The herd's client protocol, sans-IO: parsing IAMAT and WHATSAT, formatting AT and ``?``.

Fields are separated by runs of ASCII whitespace (space, tab, CR, LF, FF, VT),
exactly what ``bytes.split()`` splits on; leading and trailing whitespace is
ignored. Lines are parsed from bytes so that a field never splits on a Unicode
space (U+00A0 is part of a client ID, as the spec's "any run of non-whitespace"
counts bytes). A line that is not UTF-8 is invalid.

Time stamps are kept as ``Decimal``: a client's ``1520023934.918963997`` is
compared and subtracted exactly, never rounded through a float.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal
from typing import NamedTuple

MAX_FIELD = 256  # bytes in a client ID, location or time stamp
MAX_RADIUS_KM = 50
MAX_ITEMS = 20

# ISO 6709 decimal degrees, one token: a sign before each number. Numbers may have
# leading zeros (ISO 6709 writes longitudes with three digits: -075.0); the ranges
# are checked on the values.
# Fractions of any length (MAX_FIELD bounds the token).
_LOCATION = re.compile(r"([+-])(0*\d{1,2}(?:\.\d+)?)([+-])(0*\d{1,3}(?:\.\d+)?)", re.ASCII)
# POSIX seconds, optionally signed, with an optional fraction: no exponent, no inf/nan.
# At most 20 digits before the point, so that a difference fits the peers' AT (_DIFF).
# Decimals as a Python client's float() reads them (and writes them: str(10.0) is
# "10.0"): "10", "+10", "10." and ".5"; never "1e1", "inf" or "nan".
_TIME = re.compile(r"[+-]?(?:\d{1,20}(?:\.\d*)?|\.\d+)", re.ASCII)
_RADIUS = re.compile(r"\+?(?:0*\d{1,3}(?:\.\d*)?|\.\d+)", re.ASCII)
_COUNT = re.compile(r"\+?0*\d{1,3}", re.ASCII)
# Exact for any time a MAX_FIELD token can hold, on both sides of a subtraction (a
# Decimal's cost is in its digits, not in the context's precision).
_EXACT = Context(prec=2 * MAX_FIELD + 32)
_NANO = Decimal("1e-9")
_BILLION = Decimal(1_000_000_000)


class Invalid(ValueError):
    """A line the server answers with ``?``; the message says why (for the log)."""


# Named tuples rather than frozen dataclasses: as immutable and as comparable, and built
# in a third of the time (a frozen dataclass sets each field through object.__setattr__),
# which counts for the AT of every UPDATE a server receives.
class IAmAt(NamedTuple):
    client: str
    location: str  # as sent
    time_text: str  # as sent
    time: Decimal
    latitude: float
    longitude: float


class WhatsAt(NamedTuple):
    client: str
    radius_km: float
    max_items: int


Command = IAmAt | WhatsAt


def parse_client_line(line: bytes) -> Command:
    """The command on one line from a client; raises ``Invalid`` for anything else."""
    fields = line.split()
    if not fields:
        raise Invalid("empty line")
    try:
        name, *args = (field.decode() for field in fields)
    except UnicodeDecodeError:
        raise Invalid("not UTF-8") from None
    if name == "IAMAT":
        if len(args) != 3:
            raise Invalid(f"IAMAT takes 3 fields, not {len(args)}")
        return parse_iamat(*args)
    if name == "WHATSAT":
        if len(args) != 3:
            raise Invalid(f"WHATSAT takes 3 fields, not {len(args)}")
        return parse_whatsat(*args)
    raise Invalid(f"unknown command {name[:40]!r}")


def parse_iamat(client: str, location: str, time_text: str) -> IAmAt:
    check_client(client)
    latitude, longitude = parse_location(location)
    return IAmAt(client, location, time_text, parse_time(time_text), latitude, longitude)


def parse_whatsat(client: str, radius: str, items: str) -> WhatsAt:
    check_client(client)
    # Compared exactly: 50.0000000000000001 is over 50, though float() rounds it to 50.
    if not _RADIUS.fullmatch(radius) or Decimal(radius) > MAX_RADIUS_KM:
        raise Invalid(f"radius must be a number from 0 to {MAX_RADIUS_KM} (km)")
    if not _COUNT.fullmatch(items) or int(items) > MAX_ITEMS:
        raise Invalid(f"the number of items must be a whole number from 0 to {MAX_ITEMS}")
    return WhatsAt(client, float(radius), int(items))


def check_client(client: str) -> None:
    if len(client.encode()) > MAX_FIELD:
        raise Invalid(f"client ID longer than {MAX_FIELD} bytes")


def parse_location(text: str) -> tuple[float, float]:
    """``(latitude, longitude)`` of an ISO 6709 token such as ``+34.068930-118.445127``."""
    if len(text) > MAX_FIELD:
        raise Invalid(f"location longer than {MAX_FIELD} bytes")
    match = _LOCATION.fullmatch(text)
    if match is None:
        raise Invalid("location is not ISO 6709 decimal degrees such as +34.068930-118.445127")
    lat_sign, lat, lon_sign, lon = match.groups()
    latitude = float(lat) * (-1 if lat_sign == "-" else 1)
    longitude = float(lon) * (-1 if lon_sign == "-" else 1)
    # Exactly near the edges, where float() could round a value just over onto one.
    if (abs(latitude) >= 90 or abs(longitude) >= 180) and (Decimal(lat) > 90 or Decimal(lon) > 180):
        raise Invalid("latitude must be within 90 degrees and longitude within 180")
    return latitude, longitude


def parse_time(text: str) -> Decimal:
    if len(text) > MAX_FIELD:
        raise Invalid(f"time longer than {MAX_FIELD} bytes")
    if not _TIME.fullmatch(text):
        raise Invalid("time is not POSIX seconds such as 1520023934.918963997")
    return Decimal(text)


def format_diff(received_ns: int, client_time: Decimal) -> str:
    """Receive time minus the client's time, always signed, fixed point to the nanosecond."""
    received = _EXACT.divide(Decimal(received_ns), _BILLION)
    diff = _EXACT.subtract(received, client_time).quantize(_NANO, context=_EXACT)
    return f"{abs(diff) if diff.is_zero() else diff:+.9f}"  # never "-0.000000000"


def at_line(server: str, diff: str, client: str, location: str, time_text: str) -> str:
    return f"AT {server} {diff} {client} {location} {time_text}"


def whatsat_reply(at: str, places_json: str) -> bytes:
    """The AT line, the JSON with every run of newlines squeezed to one and trailing
    newlines removed, then an empty line."""
    squeezed = _NEWLINES.sub("\n", places_json).rstrip("\n")
    return f"{at}\n{squeezed}\n\n".encode()


_NEWLINES = re.compile(r"\n{2,}")


def invalid_reply(line: bytes) -> bytes:
    """``? `` followed by the line as received (without its newline)."""
    return b"? " + line + b"\n"


class At(NamedTuple):
    """A parsed AT line: a location as the herd stores and floods it."""

    server: str
    diff: str
    client: str
    location: str
    time_text: str
    time: Decimal
    latitude: float
    longitude: float

    @property
    def line(self) -> str:
        return at_line(self.server, self.diff, self.client, self.location, self.time_text)


# A time of up to 20 integer digits minus now (10 digits): up to 21.
_DIFF = re.compile(r"[+-]\d{1,21}\.\d{9}", re.ASCII)
SERVER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def parse_at_fields(fields: list[str]) -> At:
    """The five fields after ``AT`` (server, diff, client, location, time); ``Invalid`` if any is bad."""
    if len(fields) != 5:
        raise Invalid(f"AT takes 5 fields, not {len(fields)}")
    server, diff, client, location, time_text = fields
    if not SERVER_NAME.fullmatch(server):
        raise Invalid("bad server name")
    if not _DIFF.fullmatch(diff):
        raise Invalid("bad time difference")
    check_client(client)
    latitude, longitude = parse_location(location)
    return At(server, diff, client, location, time_text, parse_time(time_text), latitude, longitude)
