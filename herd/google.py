"""``--places google``: Google Places Nearby Search through aiohttp, for users with an API key.

The key comes from ``$GOOGLE_PLACES_API_KEY`` or a file (``--places-key-file``)
and is never logged: a failure is reported by its kind and HTTP status, never
by a URL (which would carry the key). The answer is Google's own JSON with
``results`` cut to those within the radius (Google's may lie outside it) and to
the WHATSAT's bound; a failure becomes a Nearby Search
answer with status ``UNKNOWN_ERROR`` so that the client still gets the format.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from herd.places import distance_km

log = logging.getLogger("herd.google")

NEARBY_SEARCH_URL = "https://maps.googleapis.com/maps/api/place/nearbysearch/json"
KEY_VARIABLE = "GOOGLE_PLACES_API_KEY"
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class KeyMissing(ValueError):
    pass


def read_key(key_file: Path | None) -> str:
    """The API key from ``key_file``, else from the environment."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as error:
            raise KeyMissing(f"cannot read {key_file}: {error.strerror or error}") from None
    else:
        key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key or len(key) > 1024 or any(c.isspace() for c in key):
        raise KeyMissing(
            f"--places google needs an API key in ${KEY_VARIABLE} or --places-key-file"
        )
    return key


class GooglePlaces:
    def __init__(self, key: str, url: str = NEARBY_SEARCH_URL, timeout: float = 5.0) -> None:
        self._key = key
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"GooglePlaces(url={self.url!r})"

    async def search(self, latitude: float, longitude: float, radius_km: float, limit: int):
        if limit == 0 or radius_km == 0:  # nothing can be in it: Google refuses radius 0
            return {"html_attributions": [], "results": [], "status": "ZERO_RESULTS"}
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        params = {
            "location": f"{latitude},{longitude}",
            "radius": str(max(1, round(radius_km * 1000))),  # metres, at least Google's 1
            "key": self._key,
        }
        try:
            async with self._session.get(self.url, params=params) as response:
                if response.status != 200:
                    return _failure(f"HTTP status {response.status}")
                body = await _read_at_most(response.content, MAX_ANSWER_BYTES + 1)
        except (TimeoutError, aiohttp.ClientError) as error:
            return _failure(f"request failed: {type(error).__name__}")
        if len(body) > MAX_ANSWER_BYTES:
            return _failure(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _failure("answer is not JSON")
        if not isinstance(answer, dict):
            return _failure("answer is not a JSON object")
        results = answer.get("results")
        if isinstance(results, list):
            # Google may include places outside the radius ("results outside of the
            # defined area may still be displayed"); a WHATSAT's are all within it.
            inside = [r for r in results if _within(r, latitude, longitude, radius_km)]
            answer["results"] = inside[:limit]
            if not inside and answer.get("status") == "OK":
                answer["status"] = "ZERO_RESULTS"
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end or ``limit`` bytes: ``read(n)`` gives what has come so
    far, which for an answer sent in pieces is only the first of them."""
    body = bytearray()
    while len(body) < limit:
        chunk = await stream.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _within(result: Any, latitude: float, longitude: float, radius_km: float) -> bool:
    """Whether a result's ``geometry.location`` is within the radius (one without a
    location it can be placed by is left out)."""
    try:
        where = result["geometry"]["location"]
        lat, lng = float(where["lat"]), float(where["lng"])
    except (KeyError, TypeError, ValueError):
        return False
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return False
    return distance_km(latitude, longitude, lat, lng) <= radius_km


def _failure(why: str) -> dict[str, Any]:
    log.warning("Google Places: %s", why)
    return {
        "html_attributions": [],
        "results": [],
        "status": "UNKNOWN_ERROR",
        "error_message": why,
    }
