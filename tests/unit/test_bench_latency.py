"""Latency statistics and the noise-aware regression check.

The last test measures real runners on this machine: it is the acceptance test of the gate
(the same artifact timed twice is not flagged; one doing 50% more work is)."""

import numpy as np
import pytest
from _runners import Heavier

from tldeploy.bench import latency
from tldeploy.bench.compare import compare_latency
from tldeploy.bench.latency import (
    LatencyConfig,
    LatencyStats,
    measure_interleaved,
    measure_latency,
    summarise,
)
from tldeploy.errors import ConfigError
from tldeploy.runtime.runners import BaseRunner, DeviceStages, OrtRunner, TensorSpec


class WorkRunner(BaseRunner):
    """A runner whose inference is `rounds` passes of a single-threaded ufunc over a fixed array."""

    def __init__(self, rounds: int) -> None:
        super().__init__()
        self.rounds, self.name = rounds, f"work[{rounds}]"

    def _activate(self) -> None:
        self.x = np.random.default_rng(0).standard_normal(50_000)

    def _input_spec(self):
        return {"images": TensorSpec((None, 4), np.dtype(np.float32))}

    def _infer(self, feed):
        acc = self.x
        for _ in range(self.rounds):
            acc = np.sin(acc)
        return {"logits": feed["images"] + float(acc[0])}


FEED = {"images": np.zeros((2, 4), np.float32)}


def test_stats_from_samples():
    s = LatencyStats.from_samples(4, [1.0, 2.0, 3.0, 4.0, 100.0], [2, 3])
    assert (s.min, s.p50, s.max) == (1.0, 3.0, 100.0) and s.p90 > s.p50 and s.p99 <= s.max
    assert s.throughput == pytest.approx(4 * 1000 / 22.0) and len(s.samples_ms) == 5 and s.round_sizes == [2, 3]
    with pytest.raises(ValueError, match="add up"):
        LatencyStats.from_samples(1, [1.0, 2.0], [3])


def test_stats_are_the_textbook_statistics_of_the_samples():
    s = LatencyStats.from_samples(4, [1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.mean == 22.0 and s.std == pytest.approx(np.sqrt(7610 / 4))  # sample std (n - 1)
    # linear interpolation between order statistics: p90 sits 0.6 of the way from 4 to 100
    assert (s.p90, s.p95, s.p99) == pytest.approx((4 + 0.6 * 96, 4 + 0.8 * 96, 4 + 0.96 * 96))
    assert s.round_sizes == [5] and s.clock == "perf_counter" and s.stages is None
    assert LatencyStats.from_samples(1, [1.0, 3.0]).std == pytest.approx(np.sqrt(2))
    one = LatencyStats.from_samples(8, [2.0])
    assert (one.std, one.min, one.p50, one.p99, one.max, one.throughput) == (0.0, 2.0, 2.0, 2.0, 2.0, 4000.0)
    assert one.to_dict()["samples_ms"] == [2.0] and one.to_dict()["batch"] == 8
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.from_samples(1, [])
    assert summarise([3.0, 1.0, 2.0, 10.0]) == {"mean": 4.0, "p50": 2.5, "min": 1.0, "max": 10.0}


@pytest.mark.parametrize(("kw", "flag"), [
    ({"warmup": -1}, "--warmup"), ({"warmup_s": -0.5}, "--warmup"), ({"duration_s": 0.0}, "--duration"),
    ({"settle_s": -0.01}, "settle_s"), ({"rounds": 0}, "--rounds"), ({"iters": 9, "rounds": 10}, "fewer than --rounds"),
])
def test_latency_config_refuses(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        LatencyConfig(**kw)


def test_latency_config_edges_that_are_fine():
    assert LatencyConfig(warmup=0, iters=4, rounds=4, settle_s=0).rounds == 4  # one iteration a round
    assert LatencyConfig(iters=0, duration_s=0.5, rounds=5).duration_s == 0.5  # iterations do not count with a duration
    assert LatencyConfig(warmup=0, warmup_s=0.0, iters=1, rounds=1).iters == 1  # no warm-up, one timed call


class LogRunner(BaseRunner):
    """Writes its name to a shared log on every call."""

    def __init__(self, name: str, log: list[str], clock: list[float] | None = None, step_s: float = 0.0) -> None:
        super().__init__()
        self.name, self.log, self.clock, self.step_s = name, log, clock, step_s

    def _activate(self) -> None:
        pass

    def _input_spec(self):
        return {"images": TensorSpec((None, 4), np.dtype(np.float32))}

    def _infer(self, feed):
        self.log.append(self.name)
        if self.clock is not None:
            self.clock[0] += self.step_s
        return {"logits": feed["images"]}


def _runs(log: list[str]) -> list[tuple[str, int]]:
    """The log as (name, consecutive calls)."""
    out: list[tuple[str, int]] = []
    for name in log:
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


def test_turns_rotate_each_after_a_pause_and_a_refill_call(monkeypatch):
    """Warm-up for each, then per round each takes its turn (the first of a round moves one on
    each round): a pause of settle_s, one untimed call, then the round's share of the timed ones."""
    log: list[str] = []
    slept: list[float] = []
    monkeypatch.setattr(latency.time, "sleep", slept.append)
    runners = [LogRunner(n, log) for n in "abc"]
    for r in runners:
        r.activate()
    seen: list[int] = []
    stats = measure_interleaved([(r, FEED) for r in runners], LatencyConfig(warmup=2, iters=7, rounds=3, settle_s=0.25),
                                progress=seen.append)
    assert _runs(log) == [("a", 2), ("b", 2), ("c", 2),  # warm-up
                          ("a", 4), ("b", 4), ("c", 4),  # round 1: 1 untimed + 3 timed each
                          ("b", 3), ("c", 3), ("a", 3),  # round 2: 1 + 2
                          ("c", 3), ("a", 3), ("b", 3)]  # round 3: 1 + 2
    assert [s.round_sizes for s in stats] == [[3, 2, 2]] * 3 and all(len(s.samples_ms) == 7 for s in stats)
    assert slept == [0.25] * 9 and seen == [1] * 21
    log.clear()
    slept.clear()
    seen.clear()
    measure_latency(runners[0], FEED, LatencyConfig(warmup=1, iters=4, rounds=2, settle_s=0.25), progress=seen.append)
    assert log == ["a"] * (1 + 2 * 3) and slept == [] and seen == [1] * 4  # a runner alone waits for no one
    measure_interleaved([(r, FEED) for r in runners[:2]], LatencyConfig(warmup=0, iters=2, rounds=2, settle_s=0.125))
    assert slept == [0.125] * 4
    slept.clear()
    measure_interleaved([(r, FEED) for r in runners[:2]], LatencyConfig(warmup=0, iters=2, rounds=2, settle_s=0))
    assert slept == []


def test_any_object_with_infer_can_be_timed():
    class Bare:
        calls = 0

        def infer(self, feed):
            Bare.calls += 1
            return {}

    s = measure_latency(Bare(), FEED, LatencyConfig(warmup=1, iters=3, rounds=1))
    assert Bare.calls == 1 + 1 + 3 and len(s.samples_ms) == 3 and s.clock == "perf_counter" and s.batch == 2


def test_duration_and_warmup_seconds_run_on_the_clock(monkeypatch):
    """A fake clock that only each call moves on (1/64 s a call): 0.25 s over 4 rounds is 4 calls a
    turn, 1/32 s of warm-up is 2 calls, and every sample is 1000/64 ms."""
    clock = [0.0]
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock[0])
    log: list[str] = []
    with LogRunner("a", log, clock, 1 / 64) as a, LogRunner("b", log, clock, 1 / 64) as b:
        stats = measure_interleaved([(a, FEED), (b, FEED)], LatencyConfig(warmup_s=1 / 32, duration_s=0.25, rounds=4, settle_s=0))
    assert _runs(log)[:2] == [("a", 2), ("b", 2)]
    for s in stats:
        assert s.round_sizes == [4, 4, 4, 4] and s.samples_ms == [1000 / 64] * 16


class FakeEvent:
    """torch.cuda.Event on a fake device clock."""

    clock = [0.0]
    stream = None

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t: float | None = None

    def record(self, stream) -> None:
        assert stream is FakeEvent.stream, "events must be recorded on the runner's stream"
        self.t = FakeEvent.clock[0]

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.t is not None and end.t is not None
        return end.t - self.t


class FakeStream:
    def __init__(self) -> None:
        self.synced, self.current = 0, False

    def synchronize(self) -> None:
        self.synced += 1


class StagedRunner(LogRunner):
    """A device runner whose copy-in takes 1 ms, compute 2 ms plus 0.5 ms more per call, copy-out 0.25 ms."""

    def _device_stages(self, feed):
        stream, calls = FakeStream(), [0]
        FakeEvent.stream = stream

        def on_stream(ms: float, what: str):
            def step() -> None:
                assert stream.current, f"{what} ran outside the runner's stream"
                self.log.append(what)
                FakeEvent.clock[0] += ms + (0.5 * calls[0] if what == "compute" else 0.0)
                if what == "compute":
                    calls[0] += 1
            return step

        self.stream = stream
        return DeviceStages(stream, on_stream(1.0, "h2d"), on_stream(2.0, "compute"), on_stream(0.25, "d2h"), lambda: {})


def test_device_stages_are_timed_with_events_stage_by_stage(monkeypatch):
    import contextlib

    import torch

    @contextlib.contextmanager
    def on(stream):
        stream.current = True
        yield
        stream.current = False

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "stream", on)
    FakeEvent.clock = [0.0]
    log: list[str] = []
    with StagedRunner("gpu", log) as r:
        s = measure_latency(r, FEED, LatencyConfig(warmup=2, iters=4, rounds=2))
    # calls: 2 warm-up, then per round 1 untimed + 2 timed; compute took 2 + 0.5 * (call index) ms
    computes = [2.0 + 0.5 * i for i in (3, 4, 6, 7)]
    assert log == ["h2d", "compute", "d2h"] * 8 and r.stream.synced == 8
    assert s.clock == "cuda_events" and s.batch == 2 and s.round_sizes == [2, 2]
    assert s.samples_ms == pytest.approx([1.0 + c + 0.25 for c in computes])
    assert s.stages == {"h2d": {"mean": 1.0, "p50": 1.0, "min": 1.0, "max": 1.0},
                        "compute": summarise(computes),
                        "d2h": {"mean": 0.25, "p50": 0.25, "min": 0.25, "max": 0.25}}


def test_measure_counts_iterations_rounds_and_duration():
    with WorkRunner(1) as a, WorkRunner(3) as b:
        s = measure_latency(a, FEED, LatencyConfig(warmup=2, iters=23, rounds=5))
        assert len(s.samples_ms) == 23 and s.round_sizes == [5, 5, 5, 4, 4] and s.batch == 2 and s.min > 0
        assert s.clock == "perf_counter" and s.stages is None
        seen = []
        both = measure_interleaved([(a, FEED), (b, FEED)], LatencyConfig(warmup=0, iters=12, rounds=3), progress=seen.append)
        assert [x.round_sizes for x in both] == [[4, 4, 4], [4, 4, 4]] and sum(seen) == 24
        assert both[1].p50 > both[0].p50  # three passes cost more than one
        timed = measure_latency(a, FEED, LatencyConfig(warmup=0, duration_s=0.1, rounds=4))
        assert len(timed.round_sizes) == 4 and min(timed.round_sizes) >= 1
    with pytest.raises(ConfigError, match="--iters"):
        LatencyConfig(iters=0)
    with pytest.raises(ConfigError, match="fewer than --rounds"):
        LatencyConfig(iters=3, rounds=5)


def test_compare_needs_samples_and_reports():
    v = compare_latency([1.0] * 10 + [1.1] * 10, [1.5] * 10 + [1.6] * 10)
    assert v.regression and v.ratio == pytest.approx(1.55 / 1.05) and v.ci_low > 1 and v.resampled == "blocks"
    assert "REGRESSION" in v.line()
    assert not compare_latency([1.0] * 10 + [1.1] * 10, [1.04] * 10 + [1.12] * 10).regression  # below the 10% limit
    with pytest.raises(ValueError, match="at least 5 samples"):
        compare_latency([1.0, 2.0], [1.0] * 10)


def test_compare_resamples_rounds_so_a_drifting_round_is_not_significant():
    """Current is 20% slower overall, but only because one of its four rounds ran 2x slow: with
    rounds resampled that is not significant; resampling blocks of samples calls it real."""
    rng = np.random.default_rng(0)
    base = 1.0 + 0.01 * rng.standard_normal(400)
    cur = 1.0 + 0.01 * rng.standard_normal(400)
    cur[100:200] *= 2.0
    cur[200:300] *= 1.25
    by_rounds = compare_latency(base, cur, baseline_rounds=[100] * 4, current_rounds=[100] * 4)
    by_blocks = compare_latency(base, cur)
    assert by_rounds.resampled == "rounds" and by_rounds.ratio > 1.1 and by_rounds.ci_low <= 1 and not by_rounds.regression
    assert by_blocks.resampled == "blocks" and by_blocks.regression


def test_same_artifact_twice_is_not_flagged_and_a_slower_one_is(tiny):
    """6 benchmark runs; in each, the tiny model (ONNX Runtime, batch 64) is timed as two artifacts
    and a copy doing 50% more work (each call runs 96 images instead of 64), taking turns in 30
    rounds of 50 ms, as `tldeploy bench A B` does, and compared round by round (paired).

    Measured on the 2-core VM this was written on: identical artifacts timed in separate runs
    differed by up to 35% in medians (machine drift), and with 8 rounds of 190 ms a round the
    machine's speed changed enough between two turns that 20%-slower runs were missed 2-3 times in
    8. With 30 rounds: 0 of 48 identical pairs flagged (ratios 0.95-1.05). The slower copy once did
    14% more work, which measured 1.18-1.41 slower: too close to the 10% limit on a loaded machine.
    At 50% more work it measured 1.67-1.73 slower (lower bounds 1.63-1.70, 8 of 8 flagged, on
    2 cores shared with other jobs), so a missed one is the gate's fault, not the margin's;
    the limit itself is tested on fixed series in test_compare.py. (6 runs, not the 8 measured
    above, to keep the suite within its budget: 12 identical pairs may flag 1, 6 slower must flag 5.)"""
    onnx = tiny[1]
    cfg = LatencyConfig(warmup_s=0.2, duration_s=1.5, rounds=30, settle_s=0)  # measured so, without pauses
    with OrtRunner(onnx) as a, OrtRunner(onnx) as a2, OrtRunner(onnx) as a3, Heavier(a3, share=0.5) as slow:
        size = a.input_spec()["images"].shape[-1]
        feed = {"images": np.random.default_rng(0).standard_normal((64, 3, size, size)).astype(np.float32)}
        assert len(slow.infer(feed)["logits"]) == 96 == 1.5 * len(a.infer(feed)["logits"])  # the extra work, counted
        runs = [measure_interleaved([(a, feed), (a2, feed), (slow, feed)], cfg) for _ in range(6)]

    def verdict(x, y):
        return compare_latency(x.samples_ms, y.samples_ms, baseline_rounds=x.round_sizes, current_rounds=y.round_sizes, paired=True)

    same = [verdict(r[0], r[1]) for r in runs] + [verdict(r[1], r[0]) for r in runs]
    slower = [verdict(r[0], r[2]) for r in runs]
    report = (f"identical: ratios {[round(v.ratio, 3) for v in same]}; "
              f"slower: ratios {[round(v.ratio, 3) for v in slower]}, lower bounds {[round(v.ci_low, 3) for v in slower]}")
    assert np.median([v.ratio for v in slower]) > 1.25, report  # the extra work shows, well above the 10% limit
    assert sum(v.regression for v in same) <= 1, report
    assert sum(v.regression for v in slower) >= 5, report
    assert all(v.resampled == "paired rounds" for v in same + slower)
