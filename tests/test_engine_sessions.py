"""Exactly-once: a retried mutation is never applied twice nor answered differently."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from harness.processes import wait_until
from hashtable.database import Database
from hashtable.protocol import decode_outcome
from hashtable.request import OK_NONE, Outcome, Request, Status, numbering_problem
from hashtable.sessions import SessionLimits, Sessions


def mutation(method, key, seq, client="c1", ack=None, value=None) -> Request:
    return Request(method, key=key, value=value, client=client, seq=seq, ack=ack)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_a_retried_remove_answers_its_first_result_and_is_not_applied_again(data):
    with Database(data) as db:
        db.execute(mutation("insert", "k", 1, value="v1"))
        first = db.execute(mutation("remove", "k", 2, ack=1))
        db.execute(Request("insert", key="k", value="v2"))  # someone else re-inserts it
        again = db.execute(mutation("remove", "k", 2, ack=1))
        assert first == again == Outcome.ok("v1")
        assert db.execute(Request("lookup", key="k")).result == "v2"  # not removed twice


def test_outcomes_survive_a_restart_because_replay_recomputes_them(data):
    with Database(data) as db:
        db.execute(mutation("insert", "k", 1, value={"n": 1}))
        db.execute(mutation("remove", "k", 2, ack=1))
        db.execute(mutation("remove", "gone", 3, ack=1))  # fails: logged too
        db.execute(Request("insert", key="gone", value="appeared later"))
        db.commit()
    with Database(data) as db:
        assert db.execute(mutation("remove", "k", 2, ack=1)) == Outcome.ok({"n": 1})
        retried = db.execute(mutation("remove", "gone", 3, ack=1))
        assert (retried.status, retried.error) == (Status.FAILED, "KeyError")
        assert db.execute(Request("lookup", key="gone")).result == "appeared later"
        assert not db.needs_commit  # answered from the session, nothing logged


def test_ack_releases_outcomes_and_an_acknowledged_retry_is_refused(data):
    with Database(data) as db:
        db.execute(mutation("insert", "a", 1, value=1))
        db.execute(mutation("insert", "b", 2, ack=1, value=2))
        assert db.stats()["session_outcomes"] == 1
        refused = db.execute(mutation("insert", "a", 1, value="changed"))
        assert refused.status is Status.INVALID and "acknowledged" in refused.message
        assert db.execute(Request("lookup", key="a")).result == 1


def test_an_unknown_client_must_start_at_seq_1(data):
    with Database(data) as db:
        refused = db.execute(mutation("insert", "k", 5, client="stranger", ack=4, value=1))
        assert refused.status is Status.FAILED and refused.error == "SessionUnknown"
        assert "seq 5 was not applied" in refused.message
        assert db.execute(Request("size")).result == 0
        assert db.execute(mutation("insert", "k", 1, client="stranger", value=1)) == OK_NONE


def test_out_of_order_seqs_within_the_window_are_each_applied_once(data):
    with Database(data) as db:
        db.execute(mutation("insert", "x", 1, value=1))
        assert db.execute(mutation("insert", "z", 3, value=3)) == OK_NONE
        assert db.execute(mutation("insert", "y", 2, value=2)) == OK_NONE
        assert db.execute(Request("size")).result == 3
        db.execute(Request("remove", key="y"))
        assert db.execute(mutation("insert", "y", 2, value=2)) == OK_NONE  # a retry
        assert db.execute(Request("lookup", key="y")).error == "KeyError"


def test_an_invalid_mutation_consumes_its_seq_and_keeps_its_answer_after_restart(data):
    with Database(data) as db:
        bad = db.execute(mutation("insert", 42, 1, value=1))  # key is not a string
        assert bad.status is Status.INVALID
        assert db.needs_commit  # logged, so that the session survives a crash
        db.commit()
    with Database(data) as db:
        assert db.execute(mutation("insert", 42, 1, value=1)) == bad
        assert db.execute(mutation("insert", "k", 2, ack=1, value=1)) == OK_NONE


@pytest.mark.parametrize(
    ("client", "seq", "ack", "problem"),
    [
        (None, 1, None, '"client" and "seq" go together'),
        (None, None, 0, '"ack" needs "client" and "seq"'),
        ("c", None, None, '"client" and "seq" go together'),
        ("c", 0, None, 'field "seq" must be an integer from 1'),
        ("c", True, None, 'field "seq" must be an integer from 1 to 2**63-1, not a boolean'),
        ("c", 2**63, None, 'field "seq" must be'),
        ("c", 1.0, None, 'field "seq" must be'),
        ("c", 3, 3, '"ack" must be less than "seq"'),
        ("c", 3, -1, 'field "ack" must be an integer from 0'),
        ("c", 3, "2", 'field "ack" must be'),
        ("", 1, None, "printable ASCII"),
        ("x" * 129, 1, None, "printable ASCII"),
        ("caf\u00e9", 1, None, "printable ASCII"),
        ("a\nb", 1, None, "printable ASCII"),
        (7, 1, None, "printable ASCII"),
    ],
)
def test_bad_session_fields_are_invalid_and_logged_nowhere(data, client, seq, ack, problem):
    request = Request("insert", key="k", value=1, client=client, seq=seq, ack=ack)
    assert problem in numbering_problem(request)
    with Database(data) as db:
        outcome = db.execute(request)
        assert outcome.status is Status.INVALID and problem in outcome.message
        assert not db.needs_commit


def test_good_session_fields():
    assert numbering_problem(Request("insert", key="k", value=1)) is None
    assert numbering_problem(Request("remove", key="k", client="c" * 128, seq=2**63 - 1)) is None
    assert numbering_problem(Request("remove", key="k", client="6f1e-uuid", seq=7, ack=6)) is None


def test_the_same_rules_on_the_wire_and_in_the_engine():
    # A client id the wire parser takes is one the engine takes, and the other way round.
    from hashtable.protocol import parse_request

    for client in ("é\n", "ok-id", "x" * 128, "x" * 129, "tab\there"):
        line = f'{{"method": "remove", "key": "k", "client": {orjson.dumps(client).decode()}, "seq": 1}}'
        parsed = parse_request(line.encode())
        direct = numbering_problem(Request("remove", key="k", client=client, seq=1))
        assert isinstance(parsed, Request) == (direct is None), client


def test_per_client_bound_evicts_the_oldest_and_refuses_their_retry(data):
    limits = SessionLimits(max_clients=10, max_outcomes_per_client=3, max_outcomes=100)
    with Database(data, session_limits=limits) as db:
        for seq in range(1, 6):  # never acknowledged
            db.execute(mutation("insert", f"k{seq}", seq, value=seq))
        assert db.stats()["session_outcomes"] == 3
        db.execute(Request("remove", key="k1"))
        refused = db.execute(mutation("insert", "k1", 1, value=1))
        assert refused.status is Status.INVALID and "too old" in refused.message
        assert db.execute(Request("lookup", key="k1")).error == "KeyError"
        assert db.execute(mutation("insert", "k5", 5, value="other")) == OK_NONE  # kept


def test_least_recently_active_clients_are_forgotten_beyond_the_bound(data):
    limits = SessionLimits(max_clients=2, max_outcomes_per_client=10, max_outcomes=100)
    with Database(data, session_limits=limits) as db:
        db.execute(mutation("insert", "a", 1, client="old", value=1))
        db.execute(mutation("insert", "b", 1, client="middle", value=1))
        db.execute(mutation("insert", "a", 2, client="old", value=2))  # old is active again
        db.execute(mutation("insert", "c", 1, client="new", value=1))  # evicts middle
        assert db.stats()["sessions"] == 2
        # middle lost its outcomes, not its number: a retry of seq 1 is not applied
        # again, its next mutation is applied as if nothing had happened.
        retry = db.execute(mutation("insert", "b", 1, client="middle", value="again"))
        assert retry.status is Status.FAILED and retry.error == "OutcomeForgotten"
        assert db.execute(Request("lookup", key="b")).result == 1
        assert db.execute(mutation("insert", "b", 2, client="middle", ack=1, value=9)) == OK_NONE
        assert db.execute(Request("lookup", key="b")).result == 9
        # middle's return evicted old, the least recently active now: its retry is not applied
        assert db.execute(mutation("insert", "a", 2, client="old", value="x")).error == (
            "OutcomeForgotten"
        )
        assert db.execute(Request("lookup", key="a")).result == 2


def test_forgotten_twice_over_a_client_starts_a_new_session(data):
    limits = SessionLimits(
        max_clients=1, max_outcomes_per_client=10, max_outcomes=100, max_forgotten=1
    )
    with Database(data, session_limits=limits) as db:
        db.execute(mutation("insert", "k", 1, client="a", value=1))
        db.execute(mutation("insert", "k", 1, client="b", value=2))  # a: forgotten once
        db.execute(mutation("insert", "k", 1, client="c", value=3))  # a: twice over
        refused = db.execute(mutation("insert", "k", 2, client="a", ack=1, value=4))
        assert (
            refused.error == "SessionUnknown" and db.execute(Request("lookup", key="k")).result == 3
        )
        db.commit()
    with Database(data, session_limits=limits) as db:  # the forgotten survive a restart
        assert (
            db.execute(mutation("insert", "k", 1, client="b", value=5)).error == "OutcomeForgotten"
        )


def test_total_outcome_bound_forgets_whole_clients(data):
    limits = SessionLimits(max_clients=100, max_outcomes_per_client=5, max_outcomes=6)
    with Database(data, session_limits=limits) as db:
        for seq in range(1, 5):
            db.execute(mutation("insert", "k", seq, client="first", value=seq))
        for seq in range(1, 4):
            db.execute(mutation("insert", "k", seq, client="second", value=seq))
        assert db.stats()["sessions"] == 1  # "first" was the least recently active
        assert db.stats()["session_outcomes"] == 3


def test_replay_rebuilds_identical_sessions_including_eviction(data):
    limits = SessionLimits(max_clients=3, max_outcomes_per_client=4, max_outcomes=10)
    with Database(data, session_limits=limits) as db:
        for i in range(60):
            client = f"c{i * 7 % 5}"
            seq = i // 5 + 1
            db.execute(
                mutation(("insert", "remove")[i % 3 == 0], f"k{i % 4}", seq, client, value=i)
            )
        db.commit()
        live = list(db.sessions.rows())
    with Database(data, session_limits=limits) as db:
        assert list(db.sessions.rows()) == live


def test_sessions_survive_compaction_through_the_checkpoint(data):
    with Database(data, compact_after=5) as db:
        db.execute(mutation("insert", "k", 1, value="v"))
        first = db.execute(mutation("remove", "k", 2, ack=1))
        for i in range(10):
            db.execute(Request("insert", key=f"other{i}", value=i))
        db.commit()
        wait_until(lambda: db.maintain() or db.stats()["compactions"], what="compaction")
    assert '["k",' not in (data / "table.ckpt").read_text()  # removed before the snapshot
    with Database(data) as db:
        assert db.stats()["log_entries"] == 0  # all from the checkpoint
        assert db.execute(mutation("remove", "k", 2, ack=1)) == first


def test_session_rows_round_trip_and_malformed_rows_are_rejected():
    sessions = Sessions()
    sessions.record("a", 1, 0, OK_NONE)
    sessions.record("a", 2, 0, Outcome.failed("KeyError", "no such key: 'k'"))
    sessions.record("b", 1, 0, Outcome.ok({"v": [1]}))
    copy = Sessions()
    for row in sessions.rows():
        copy.restore(row)
    assert list(copy.rows()) == list(sessions.rows()) and copy.outcomes == 3
    for row in ({"client": "a"}, [], {"client": "z", "floor": 0, "outcomes": [[1, {}]]}):
        with pytest.raises(ValueError):
            Sessions().restore(row)
    with pytest.raises(ValueError):
        copy.restore(next(sessions.rows()))  # a client twice
    with pytest.raises(ValueError):
        decode_outcome({"status": "failed", "error": "KeyError", "message": 3})
