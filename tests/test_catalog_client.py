"""catalog.client's choice among a project's records, and what servers announce for it.

Found by the chaos battery (server moves): a server that restarted within the
same second as its dead predecessor's last announcement left two records with
the same lastheardfrom (whole seconds), clients picked the dead one, and kept
picking it until the live one announced again a minute later.
"""

from __future__ import annotations

import time

from catalog.client import matching, query, resolve
from harness.processes import wait_until
from tests.server_support import start_server
from tests.test_catalog_helpers import OurCatalog


def hashtable(port: int, heard: object, **fields: object) -> dict:
    return {"type": "hashtable", "project": "p", "port": port, "lastheardfrom": heard, **fields}


def test_the_record_heard_from_last_comes_first():
    records = [hashtable(1, 100), hashtable(2, 102), hashtable(3, 101), {"type": "x", "port": 4}]
    assert [r["port"] for r in matching(records, "hashtable", "p")] == [2, 3, 1]


def test_between_records_heard_from_in_the_same_second_the_one_started_last_wins():
    dead = hashtable(1, 100, starttime=99.8)
    live = hashtable(2, 100, starttime=100.2)
    for records in ([dead, live], [live, dead]):
        assert matching(records, "hashtable", "p")[0]["port"] == 2


def test_odd_fields_count_as_oldest():
    records = [hashtable(1, "soon", starttime=True), hashtable(2, 5), hashtable(3, None)]
    assert matching(records, "hashtable", "p")[0]["port"] == 2


def test_a_server_announces_its_start_to_the_millisecond(spawn, catalog, tmp_path):
    before = time.time()
    server = start_server(spawn, tmp_path / "data", project="starts", catalog=catalog.host)
    after = time.time()
    record = wait_until(
        lambda: resolve("hashtable", "starts", [("127.0.0.1", catalog.port)]),
        what="the server's record",
    )
    assert record["port"] == server.port
    assert before - 0.001 <= record["starttime"] <= after
    assert isinstance(record["starttime"], float)  # whole seconds would tie again
    assert len(query(catalogs=[("127.0.0.1", catalog.port)])) == 1


def test_a_catalog_that_lost_its_records_lists_a_server_at_its_next_announcement(spawn, tmp_path):
    """The chaos battery restarts catalogs without their state; servers announce
    every --announce-interval seconds (60 by default) and are found again."""
    first = OurCatalog(spawn, tmp_path / "state")
    catalogs = [("127.0.0.1", first.port)]
    server = start_server(
        spawn, tmp_path / "data", "--announce-interval", "0.5", project="again", catalog=first.host
    )
    wait_until(lambda: resolve("hashtable", "again", catalogs), what="the server's record")
    first.process.kill()
    OurCatalog(spawn, tmp_path / "empty-state", port=first.port)
    record = wait_until(lambda: resolve("hashtable", "again", catalogs), what="the record again")
    assert record["port"] == server.port
