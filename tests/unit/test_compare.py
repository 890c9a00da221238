"""The statistics of `tldeploy compare` on fixed series, and `compare_bench` on hand-built documents
(the CLI and real bench documents are tested in test_bench.py)."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from tldeploy.bench.compare import (
    MIN_ROUNDS,
    CompareConfig,
    CompareResult,
    Comparison,
    LatencyVerdict,
    _block_medians,
    _per_round_medians,
    _round_medians,
    compare_bench,
    compare_latency,
)
from tldeploy.errors import ConfigError, TldeployError
from tldeploy.parity import ParityReport
from tldeploy.records import BenchDocument, BenchRow, LatencyStats

# ------------------------------------------------------------ resampling


def test_round_medians_draw_whole_rounds():
    x = np.array([1.0, 2.0, 3.0, 10.0, 20.0])  # rounds [1, 2, 3] and [10, 20]
    assert _per_round_medians(x, [3, 2]).tolist() == [2.0, 15.0]
    pick = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])
    # [1,2,3,1,2,3] -> 2; [10,20,10,20] -> 15; [1,2,3,10,20] -> 3 (the shorter round's padding is no sample)
    assert _round_medians(x, [3, 2], pick).tolist() == [2.0, 15.0, 3.0, 3.0]


class FixedStarts:
    """A generator whose `integers` returns fixed block starts, and remembers what it was asked."""

    def __init__(self, starts) -> None:
        self.starts, self.asked = np.array(starts), []

    def integers(self, low, high, size):
        self.asked.append((low, high, size))
        return self.starts


def test_block_medians_resample_blocks_of_sqrt_n_consecutive_samples():
    x = np.arange(10.0)  # blocks of round(sqrt(10)) = 3; 4 blocks cover the 10 samples
    rng = FixedStarts([[0, 3, 6, 7], [7, 7, 7, 7]])
    medians = _block_medians(x, 2, rng)
    assert rng.asked == [(0, 8, (2, 4))]  # a block may start at 0..7
    # [0..8, 7] -> 4.5; [7, 8, 9] * 3 + [7] -> 8
    assert medians.tolist() == [4.5, 8.0]
    assert _block_medians(np.arange(5.0), 3, FixedStarts([[0, 2, 4]] * 3)).tolist() == [2.0] * 3  # blocks of 2


# ------------------------------------------------------------ the verdict


def _rounds(levels, per_round=2):
    """Samples that are constant within each round, and the round sizes."""
    return [float(v) for v in levels for _ in range(per_round)], [per_round] * len(levels)


def test_the_ratio_is_of_medians_and_the_limit_is_strict():
    v = compare_latency([1.0] * 10 + [3.0] * 10, [2.0] * 10 + [4.0] * 10)
    assert (v.baseline_p50, v.current_p50, v.ratio) == (2.0, 3.0, 1.5) and v.resampled == "blocks"
    at_limit = compare_latency([1.0] * 8, [1.1] * 8)  # constant series: the interval is the ratio itself
    assert (at_limit.ratio, at_limit.ci_low, at_limit.ci_high) == (1.1, 1.1, 1.1) and not at_limit.regression
    assert compare_latency([1.0] * 8, [1.1000001] * 8).regression
    assert not compare_latency([1.0] * 8, [1.5] * 8, max_slowdown=0.5).regression
    assert compare_latency([1.0] * 8, [1.5] * 8, max_slowdown=0.49).regression
    assert not compare_latency([2.0] * 8, [1.0] * 8, max_slowdown=0).regression  # faster is no regression


def test_a_slowdown_whose_interval_reaches_1_is_not_a_regression():
    """Per-round ratios 1, 1, 1.2, 1.2, 1.2: the median is 1.2, above the limit, but a third of the
    resamples draw a majority of the 1.0 rounds, so the interval's lower end is exactly 1."""
    base, b_rounds = _rounds([1.0] * 5)
    cur, c_rounds = _rounds([1.0, 1.0, 1.2, 1.2, 1.2])
    v = compare_latency(base, cur, baseline_rounds=b_rounds, current_rounds=c_rounds, paired=True)
    assert v.ratio == 1.2 and v.ci_low == 1.0 and v.ci_high == 1.2 and not v.regression


def test_paired_rounds_cancel_drift_that_separate_rounds_cannot():
    """The machine ran 10x slower in rounds 4-5 for the baseline's turns and in rounds 2, 3 and 5
    for the current's: pairing round by round finds no change, the medians overall 10x."""
    base, b_rounds = _rounds([1, 1, 1, 10, 10])
    cur, c_rounds = _rounds([1, 10, 10, 1, 10])
    paired = compare_latency(base, cur, baseline_rounds=b_rounds, current_rounds=c_rounds, paired=True)
    apart = compare_latency(base, cur, baseline_rounds=b_rounds, current_rounds=c_rounds)
    assert paired.resampled == "paired rounds" and paired.ratio == 1.0 and not paired.regression
    assert apart.resampled == "rounds" and apart.ratio == 10.0 and (apart.baseline_p50, apart.current_p50) == (1.0, 10.0)


def _percentiles(boot, confidence):
    tail = (1 - confidence) / 2 * 100
    return tuple(float(v) for v in np.percentile(boot, [tail, 100 - tail]))


def test_intervals_are_the_bootstrap_percentiles_of_the_documented_resamples():
    """The interval recomputed here from the module's description: paired, the median of resampled
    per-round ratios; separate, each side's rounds resampled independently (baseline first)."""
    rng = np.random.default_rng(1)
    base = 1.0 + 0.1 * rng.standard_normal(40)
    cur = 1.2 + 0.1 * rng.standard_normal(40)
    sizes = [10] * 4
    per_round = np.array([np.median(cur[i : i + 10]) / np.median(base[i : i + 10]) for i in range(0, 40, 10)])
    for confidence in (0.9, 0.99):
        draw = np.random.default_rng(7)
        boot = np.median(per_round[draw.integers(0, 4, size=(500, 4))], axis=1)
        v = compare_latency(base, cur, baseline_rounds=sizes, current_rounds=sizes, paired=True, confidence=confidence, n_boot=500, seed=7)
        assert v.ratio == pytest.approx(float(np.median(per_round))) and v.confidence == confidence
        assert (v.ci_low, v.ci_high) == pytest.approx(_percentiles(boot, confidence))

        draw = np.random.default_rng(7)
        b_pick, c_pick = draw.integers(0, 4, size=(500, 4)), draw.integers(0, 4, size=(500, 4))
        b_boot = np.median(base.reshape(4, 10)[b_pick].reshape(500, -1), axis=1)
        c_boot = np.median(cur.reshape(4, 10)[c_pick].reshape(500, -1), axis=1)
        v = compare_latency(base, cur, baseline_rounds=sizes, current_rounds=sizes, confidence=confidence, n_boot=500, seed=7)
        assert v.ratio == pytest.approx(np.median(cur) / np.median(base))
        assert (v.ci_low, v.ci_high) == pytest.approx(_percentiles(c_boot / b_boot, confidence))
    draw = np.random.default_rng(7)  # too few rounds: moving blocks, current's resamples first
    boot = _block_medians(cur, 500, draw) / _block_medians(base, 500, draw)
    v = compare_latency(base, cur, n_boot=500, seed=7)
    assert v.resampled == "blocks" and (v.ci_low, v.ci_high) == pytest.approx(_percentiles(boot, 0.99))
    assert compare_latency(base, cur) == compare_latency(base, cur, n_boot=2000, seed=0, confidence=0.99, max_slowdown=0.10)
    narrow = compare_latency(base, cur, confidence=0.5)
    wide = compare_latency(base, cur, confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.ci_high < wide.ci_high
    assert compare_latency(base, cur, seed=3) == compare_latency(base, cur, seed=3) != compare_latency(base, cur, seed=4)


def test_rounds_are_resampled_only_with_enough_non_empty_rounds_on_both_sides():
    x = list(1.0 + 0.01 * np.random.default_rng(0).standard_normal(12))
    four, three = [3] * 4, [4] * 3
    assert MIN_ROUNDS == 4
    assert compare_latency(x, x, baseline_rounds=four, current_rounds=four).resampled == "rounds"
    assert compare_latency(x, x, baseline_rounds=three, current_rounds=three).resampled == "blocks"
    assert compare_latency(x, x, baseline_rounds=four, current_rounds=None).resampled == "blocks"
    assert compare_latency(x, x, baseline_rounds=[4, 4, 4, 0], current_rounds=four).resampled == "blocks"
    assert compare_latency(x[:5], x[:5], baseline_rounds=[1] * 5, current_rounds=[1] * 5).resampled == "rounds"  # one sample a round
    for b, c in ((three, three), (four, [2, 2, 2, 2, 4]), ([4, 4, 4, 0], four)):
        with pytest.raises(ValueError, match=r"^paired comparison needs the same number \(at least 4\) of non-empty rounds on both sides$"):
            compare_latency(x, x, baseline_rounds=b, current_rounds=c, paired=True)
    with pytest.raises(ValueError, match="round sizes add up to 13, but there are 12 samples"):
        compare_latency(x, x, baseline_rounds=four, current_rounds=[4, 4, 5])
    with pytest.raises(ValueError, match="round sizes add up to 11"):
        compare_latency(x, x, baseline_rounds=[4, 4, 3], current_rounds=four)
    assert compare_latency(x[:5], x[:5]).ratio == 1.0  # five samples are enough
    for short in ((x[:4], x), (x, x[:4])):
        with pytest.raises(ValueError, match="need at least 5 samples on each side"):
            compare_latency(*short)


def test_verdict_line_and_dict():
    v = LatencyVerdict(1.0, 1.25, 1.25, 1.125, 1.375, 0.99, "rounds", 0.1, True)
    assert v.line() == "REGRESSION: p50 1.000 -> 1.250 ms, ratio 1.250 [1.125, 1.375], limit +10%"
    v.regression = False
    assert v.line().startswith("ok: p50 1.000") and v.to_dict()["resampled"] == "rounds"


# ------------------------------------------------------------ configuration and results


@pytest.mark.parametrize(("kw", "flag"), [
    ({"max_slowdown": -0.01}, "--max-slowdown"), ({"confidence": 1.0}, "--confidence"), ({"confidence": 0.49}, "--confidence"),
    ({"max_accuracy_drop": -1}, "--max-accuracy-drop"), ({"max_agreement_drop": -1}, "--max-agreement-drop"),
])
def test_compare_config_refuses(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        CompareConfig(**kw)


def test_compare_config_edges_that_are_fine():
    c = CompareConfig(max_slowdown=0, confidence=0.5, max_accuracy_drop=0, max_agreement_drop=0)
    assert (c.max_slowdown, c.confidence) == (0, 0.5)


def test_result_table_junit_and_dict():
    v = LatencyVerdict(1.0, 1.5, 1.5, 1.4, 1.6, 0.99, "rounds", 0.1, True)
    checks = [Comparison("a.onnx", "p50 ms, batch 1", 1.0, 1.5, "ratio 1.500", True, v),
              Comparison('b&"c".onnx', "accuracy", 0.75, 0.75, "+0.00 points", False)]
    r = CompareResult(checks, [], ["only in baseline: z"], ["a note"])
    assert r.regressions == [checks[0]]
    assert r.table().splitlines() == [
        "entry       check            baseline  current  result",
        "a.onnx      p50 ms, batch 1  1         1.5      REGRESSION: ratio 1.500",
        'b&"c".onnx  accuracy         0.75      0.75     ok: +0.00 points',
        "note: a note",
        "1 regression(s) in 2 check(s)",
    ]
    no_baseline = CompareResult([Comparison("x", "accuracy", None, 0.123456, "new", False)], [], [], [])
    assert no_baseline.table().splitlines()[1] == "x      accuracy  " + " " * len("baseline") + "  0.1235   ok: new"
    assert r.junit() == (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<testsuite name="tldeploy compare" tests="2" failures="1">\n'
        '  <testcase classname="tldeploy.compare" name="a.onnx: p50 ms, batch 1"><failure message="ratio 1.500"/></testcase>\n'
        '  <testcase classname="tldeploy.compare" name=\'b&amp;"c".onnx: accuracy\'></testcase>\n'
        "</testsuite>\n")
    suite = ET.fromstring(r.junit().split("\n", 1)[1])
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a.onnx: p50 ms, batch 1", 'b&"c".onnx: accuracy']
    assert cases[0].find("failure").get("message") == "ratio 1.500" and cases[1].find("failure") is None
    d = r.to_dict()
    assert d["regression"] is True and d["unmatched"] == ["only in baseline: z"] and d["notes"] == ["a note"]
    assert d["environment_differences"] == [] and CompareResult([], ["cpu.model: a -> b"], [], []).to_dict()["environment_differences"] == ["cpu.model: a -> b"]
    assert d["checks"][0]["verdict"]["ratio"] == 1.5 and d["checks"][1]["verdict"] is None
    assert CompareResult([checks[1]], [], [], []).to_dict()["regression"] is False


# ------------------------------------------------------------ bench documents


def _entry(name, levels=(1.0,) * 4, accuracy=0.75, agreement=0.75, batches=(1,)):
    samples, sizes = _rounds(levels, 3)
    parity = None if agreement is None else ParityReport(16, 0.0, 0.0, 0.0, 0.0, 1.0, agreement, 0.0)
    return BenchRow(name, f"{name}.onnx", "0" * 64, "artifact", "onnx", "onnxruntime", "cpu", "fp32", accuracy=accuracy, parity=parity,
                    latency=tuple(LatencyStats(b, samples, sizes) for b in batches))


def _doc(*entries, run_id="run-1", data="images-1", cpu="cpu-1"):
    return BenchDocument(run_id, "now", 1.0, {"cpu": {"model": cpu}}, {"batch_sizes": [1]}, {"sha256": data}, None, entries)


def test_compare_bench_pairs_entries_of_one_run_and_notes_separate_runs():
    base = _doc(_entry("a"), _entry("b", levels=(1.0, 1.0, 2.0, 2.0)))
    one_run = compare_bench(base, base, base_pick="a", cur_pick="b")
    assert [(c.name, c.what) for c in one_run.checks] == [("a -> b", "p50 ms, batch 1"), ("a -> b", "accuracy"), ("a -> b", "top-1 agreement")]
    lat = one_run.checks[0]
    assert lat.verdict.resampled == "paired rounds" and lat.verdict.ratio == 1.5 and not lat.regression  # interval reaches 1
    assert lat.detail == f"ratio 1.500, 99% interval [{lat.verdict.ci_low:.3f}, {lat.verdict.ci_high:.3f}] (resampling paired rounds), limit +10%"
    assert one_run.notes == [] and one_run.unmatched == []
    later = compare_bench(base, _doc(_entry("a", levels=(1.5,) * 4), _entry("b"), run_id="run-2"))
    assert [c.name for c in later.checks] == ["a"] * 3 + ["b"] * 3
    assert later.checks[0].verdict.resampled == "rounds" and later.checks[0].regression and later.checks[0].current == 1.5
    assert later.notes[0].startswith("separate bench runs") and "FILE.json#A FILE.json#B" in later.notes[0]
    short = _doc(_entry("a", levels=(1.0,) * 3), run_id="run-1")  # one run, but too few rounds to pair
    assert compare_bench(_doc(_entry("a", levels=(1.0,) * 3)), short).checks[0].verdict.resampled == "blocks"


def test_compare_bench_applies_the_configured_limit_and_confidence():
    base, slow = _doc(_entry("a")), _doc(_entry("a", levels=(1.5,) * 4), run_id="run-2")
    assert compare_bench(base, slow).checks[0].regression
    lenient = compare_bench(base, slow, CompareConfig(max_slowdown=0.5, confidence=0.9)).checks[0]
    assert not lenient.regression and lenient.verdict.max_slowdown == 0.5 and lenient.verdict.confidence == 0.9
    assert (lenient.baseline, lenient.current) == (1.0, 1.5)
    assert lenient.detail == "ratio 1.500, 90% interval [1.500, 1.500] (resampling rounds), limit +50%"


def test_compare_bench_accuracy_and_agreement_limits_are_strict_points():
    cfg = CompareConfig(max_accuracy_drop=25, max_agreement_drop=50)
    base = _doc(_entry("a", accuracy=0.75, agreement=1.0))
    at = compare_bench(base, _doc(_entry("a", accuracy=0.5, agreement=0.5)), cfg)
    acc, agree = at.checks[1], at.checks[2]
    assert (acc.what, acc.baseline, acc.current, acc.regression) == ("accuracy", 0.75, 0.5, False)
    assert (agree.what, agree.baseline, agree.current) == ("top-1 agreement", 1.0, 0.5)
    assert acc.detail == "-25.00 points, limit -25" and agree.detail == "-50.00 points, limit -50" and not agree.regression
    past = compare_bench(base, _doc(_entry("a", accuracy=0.49, agreement=0.49)), cfg)
    assert [c.what for c in past.regressions] == ["accuracy", "top-1 agreement"]
    better = compare_bench(base, _doc(_entry("a", accuracy=1.0, agreement=1.0)), CompareConfig(max_accuracy_drop=0, max_agreement_drop=0))
    assert not better.regressions and better.checks[1].detail.startswith("+25.00 points")


def test_compare_bench_skips_what_one_side_lacks_and_says_so():
    base = _doc(_entry("a", batches=(8, 1)), _entry("r", accuracy=0.75, agreement=None), _entry("s", agreement=0.5))
    cur = _doc(_entry("a", batches=(1,), accuracy=None), _entry("r", accuracy=0.75, agreement=None), _entry("s", agreement=None))
    r = compare_bench(base, cur)
    assert [(c.name, c.what) for c in r.checks] == [("a", "p50 ms, batch 1"), ("a", "top-1 agreement"), ("r", "p50 ms, batch 1"),
                                                    ("r", "accuracy"), ("s", "p50 ms, batch 1"), ("s", "accuracy")]
    assert r.notes == ["a: batch 8 was not timed in the current result"]
    other = compare_bench(base, _doc(*cur.rows, data="images-2"))
    assert [c.what for c in other.checks] == ["p50 ms, batch 1"] * 3
    assert other.notes == ["the two results used different images; accuracy and agreement are not compared",
                           "a: batch 8 was not timed in the current result"]


def test_compare_bench_refuses_other_environments_unless_allowed():
    base, moved = _doc(_entry("a")), _doc(_entry("a"), cpu="cpu-2")
    with pytest.raises(TldeployError, match=r"different environments \(cpu.model: cpu-1 -> cpu-2\)"):
        compare_bench(base, moved)
    allowed = compare_bench(base, moved, CompareConfig(allow_env_mismatch=True))
    assert allowed.environment_differences == ["cpu.model: cpu-1 -> cpu-2"] and len(allowed.checks) == 3
    assert compare_bench(base, base).environment_differences == []


def test_entries_are_matched_by_name_or_picked_on_both_sides():
    base = _doc(_entry("a"), _entry("b"), _entry("old"))
    cur = _doc(_entry("b"), _entry("a"), _entry("new"), _entry("newer"))
    r = compare_bench(base, cur)
    assert [c.name for c in r.checks] == ["a"] * 3 + ["b"] * 3  # in the baseline's order
    assert r.unmatched == ["only in baseline: old", "only in current: new", "only in current: newer"]
    picked = compare_bench(base, cur, base_pick="old", cur_pick="new")
    assert {c.name for c in picked.checks} == {"old -> new"} and picked.unmatched == []
    for picks, message in (
        (("nope", "a"), "the baseline has no entry 'nope'; it has a, b, old"),
        (("a", "nope"), "the current has no entry 'nope'; it has b, a, new, newer"),
        (("a", None), "name an entry on both sides (FILE.json#NAME) or on neither"),
        ((None, "a"), "name an entry on both sides (FILE.json#NAME) or on neither"),
    ):
        with pytest.raises(ConfigError) as e:
            compare_bench(base, cur, base_pick=picks[0], cur_pick=picks[1])
        assert str(e.value) == message
    with pytest.raises(ConfigError) as e:
        compare_bench(_doc(_entry("a")), _doc(_entry("b"), _entry("c")))
    assert str(e.value) == ("the two bench results share no entry names (baseline: a; current: b, c); "
                            "pick entries with FILE.json#NAME")
