"""TestPerf's statistics and command line (runs against real servers: test_testperf_cli.py)."""

from __future__ import annotations

import random
import sys

import pytest

from harness.processes import ROOT, run_program
from perftest.stats import Histogram, StageResult, StageSum


def test_histogram_percentiles_match_sorted_samples_within_two_percent():
    rng = random.Random(7)
    samples = [int(rng.lognormvariate(11, 1)) for _ in range(20_000)]
    histogram = Histogram()
    histogram.add_many(samples)
    ordered = sorted(samples)
    for p in (50, 90, 99, 99.9):
        exact = ordered[int(len(ordered) * p / 100) - 1] / 1000
        assert histogram.percentile_us(p) == pytest.approx(exact, rel=0.021)
    assert histogram.mean_us == pytest.approx(sum(samples) / len(samples) / 1000)
    assert histogram.percentile_us(100) == max(samples) / 1000


def test_merged_histograms_equal_the_pooled_samples():
    a, b, pooled = Histogram(), Histogram(), Histogram()
    a.add_many([1_000, 2_000, 3_000])
    b.add_many([50_000, 60, 7_000_000])
    pooled.add_many([1_000, 2_000, 3_000, 50_000, 60, 7_000_000])
    a.merge(b)
    assert a.to_json() == pooled.to_json()


def test_histogram_survives_json():
    histogram = Histogram()
    histogram.add_many([10, 1000, 123456])
    assert Histogram.from_json(histogram.to_json()).to_json() == histogram.to_json()


def test_stage_sum_adds_throughputs_of_concurrent_clients():
    one = StageResult("insert", ops=1000, seconds=2.0, cpu_seconds=1.0)
    two = StageResult("insert", ops=3000, seconds=1.0, cpu_seconds=0.5)
    total = StageSum("insert", [one, two])
    assert total.throughput == 500 + 3000
    assert total.mean_client_throughput == 1750
    assert total.client_cpu_share == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "at least 1"),
        (["--sweep", "1,x"], "not a whole number"),
        (["--stages", "insert,bogus"], "unknown stage"),
        (["--stages", "lookup"], "need insert"),
        (["--stage-seconds", "-1"], "greater than 0"),
        (["--server", "localhost"], "HOST:PORT"),
        (["--catalog", "host:99999"], "port must be"),
        (["--clients", "2", "--sweep", "1,2"], "not allowed with"),
    ],
)
def test_bad_arguments_get_a_clear_message_and_no_traceback(args, message):
    done = run_program([sys.executable, str(ROOT / "TestPerf.py"), "proj", *args], timeout=30)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
