"""HashTableClient's operations against a real server process."""

from __future__ import annotations

import pytest

from harness.processes import Process, free_port, python_script, wait_until
from HashTableClient import (
    HashTableClient,
    InvalidRequestError,
    ServiceUnavailable,
)
from tests.server_support import Wire, listening_port


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> int:
    """One server for the module: these tests only use their own keys."""
    tmp = tmp_path_factory.mktemp("client-api")
    args = ["api", "--host", "127.0.0.1", "--data-dir", str(tmp / "data")]
    args += ["--catalog", f"127.0.0.1:{free_port()}"]
    process = Process(python_script("HashTableServer.py", *args), tmp / "server.log")
    try:
        port = wait_until(
            lambda: listening_port(process.output()) or not process.alive(), what="server"
        )
        assert process.alive(), process.output()
        yield port
    finally:
        process.stop()


@pytest.fixture
def table(port):
    with HashTableClient.at("127.0.0.1", port) as client:
        yield client


def test_the_operations(table):
    table.insert("api:zebra", {"weight": 100, "legs": 4})
    table.insert("api:ant", {"weight": 0.001, "legs": 6})
    table.insert("api:null", None)
    assert table.lookup("api:zebra") == {"weight": 100, "legs": 4}
    assert table.lookup("api:null") is None
    assert sorted(table.scan("^api:[az]")) == [
        ("api:ant", {"weight": 0.001, "legs": 6}),
        ("api:zebra", {"weight": 100, "legs": 4}),
    ]
    assert table.query("legs", 6) == [("api:ant", {"weight": 0.001, "legs": 6})]
    size = table.size()
    assert isinstance(size, int) and size >= 3
    assert table.remove("api:ant") == {"weight": 0.001, "legs": 6}
    assert table.size() == size - 1
    table.insert("api:zebra", "replaced")
    assert table.lookup("api:zebra") == "replaced"


def test_a_missing_key_is_a_key_error(table):
    with pytest.raises(KeyError) as missing:
        table.lookup("api:never")
    assert missing.value.args == ("api:never",)
    with pytest.raises(KeyError):
        table.remove("api:never")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.scan("(unclosed"), "invalid regex"),
        (lambda t: t.lookup(42), 'field "key" must be a string'),
        (lambda t: t.insert(["k"], 1), 'field "key" must be a string'),
        (lambda t: t.query("x", {"nested": 1}), 'field "subvalue" must be'),
    ],
)
def test_an_invalid_request_is_a_value_error(table, call, message):
    with pytest.raises(InvalidRequestError, match=message) as raised:
        call(table)
    assert isinstance(raised.value, ValueError)
    assert table.size() >= 0  # the connection is still good


def test_a_value_json_cannot_carry_is_refused_before_sending(table):
    with pytest.raises(TypeError):
        table.insert("api:set", {1, 2})
    # The failed call used no sequence number: the next mutations still work.
    table.insert("api:after", 1)
    assert table.remove("api:after") == 1


def test_pipeline_results_in_order_with_failures_in_place(table):
    with table.pipeline() as p:
        inserted = [p.insert(f"api:p{n}", n) for n in range(3000)]
        found = p.lookup("api:p7")
        missing = p.lookup("api:p-missing")
        removed = [p.remove(f"api:p{n}") for n in range(3000)]
        p.scan("(")
    results = p.results()
    assert results[:3000] == [None] * 3000
    assert results[3000] == 7 and found.result() == 7
    assert isinstance(results[3001], KeyError)
    with pytest.raises(KeyError):
        missing.result()
    assert results[3002:6002] == list(range(3000))
    assert [r.result() for r in removed[:3]] == [0, 1, 2]
    assert isinstance(results[6002], InvalidRequestError)
    assert all(r.exception() is None for r in inserted)


def test_a_pipelined_value_json_cannot_carry_fails_alone(table):
    with table.pipeline() as p:
        p.insert("api:ok1", 1)
        p.insert("api:bad", {1, 2})
        p.remove("api:ok1")
        last = p.insert("api:bad2", object())
    results = p.results()
    assert results[0] is None and results[2] == 1
    assert isinstance(results[1], TypeError) and isinstance(results[3], TypeError)
    with pytest.raises(TypeError):
        last.result()
    table.insert("api:after-pipeline", 1)
    assert table.remove("api:after-pipeline") == 1


def test_a_pipeline_that_has_not_run_has_no_results(table):
    p = table.pipeline()
    reply = p.size()
    with pytest.raises(RuntimeError, match="not run"):
        reply.result()
    assert p.execute() == [reply.result()]
    assert isinstance(reply.result(), int)


def test_execute_returns_the_results_as_redis_py_does(table):
    p = table.pipeline()
    p.insert("api:e", 1)
    p.lookup("api:e")
    p.remove("api:e")
    p.lookup("api:e")
    results = p.execute()
    assert results[:3] == [None, 1, 1] and isinstance(results[3], KeyError)
    assert p.results()[:3] == results[:3]  # and results() gives them again


def test_pipeline_and_single_calls_share_the_exactly_once_numbering(table, port):
    with table.pipeline() as p:
        p.insert("api:x", 1)
        p.remove("api:x")
    table.insert("api:x", 2)
    assert table.remove("api:x") == 2
    # Four mutations, numbered 1..4 with acks: the server holds this client's session.
    with Wire(port) as wire:
        retry = {"method": "remove", "key": "api:x", "client": table.client_id, "seq": 4, "ack": 3}
        assert wire.call(retry) == {"status": "ok", "result": 2}


def test_a_client_needs_a_project_or_an_address():
    with pytest.raises(ValueError):
        HashTableClient()
    with pytest.raises(ValueError):
        HashTableClient("p", address=("127.0.0.1", 1))


def test_giving_up_is_an_option(caplog):
    dead = free_port()
    client = HashTableClient.at("127.0.0.1", dead, backoff_initial=0.05, give_up_after=0.3)
    with pytest.raises(ServiceUnavailable, match=r"unreachable for 0\.3 s"):
        client.size()
    assert "retrying in" in caplog.text


@pytest.mark.parametrize("project", ["bad/name", "../etc", "-x", "", "a b", "x" * 129])
def test_a_project_no_server_can_have_is_refused_at_once(project):
    """Else the client would wait for ever for a server that cannot be listed under it."""
    with pytest.raises(ValueError, match="cannot name a project"):
        HashTableClient(project)
