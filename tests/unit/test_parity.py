"""`Tolerance`: validation, results on a hand-made ParityReport, and its JSON round trip, including
the tolerances today's files hold (tests/fixtures/records)."""

import json
import math
from pathlib import Path

import pytest

from tldeploy.errors import ConfigError
from tldeploy.parity import ParityReport, Tolerance, ToleranceResult

RECORDS = Path(__file__).parents[1] / "fixtures" / "records"


def _report(**kw) -> ParityReport:
    base = dict(n=32, logits_max_abs=0.02, logits_mean_abs=0.001, probs_max_abs=0.01, probs_mean_abs=0.001, cosine=0.9995,
                top1_agreement=30 / 32, cam_max_abs=0.1, kl_divergence=0.004)
    return ParityReport(**{**base, **kw})


@pytest.mark.parametrize("limits, message", [
    ({"min_top1_agreement": 99}, r"--min-top1-agreement is a share in \[0, 1\], got 99"),
    ({"min_top1_agreement": -0.1}, r"--min-top1-agreement is a share in \[0, 1\], got -0.1"),
    ({"min_cosine": 1.5}, r"--min-cosine must be in \[-1, 1\], got 1.5"),
    ({"max_logit_diff": -1e-3}, r"--max-logit-diff must not be negative, got -0.001"),
    ({"max_top1_drop": -1}, r"--max-top1-drop is in accuracy points and must not be negative, got -1"),
    ({"max_kl": float("nan")}, r"--max-kl is in nats and must not be negative, got nan"),
    ({"min_cosine": "0.99"}, r"--min-cosine must be a number, got '0.99'"),
    ({"max_logit_diff": True}, r"--max-logit-diff must be a number, got True"),
])
def test_tolerance_refuses_a_bad_limit_by_name(limits, message):
    with pytest.raises(ConfigError, match=message):
        Tolerance(**limits)


def test_tolerance_accepts_the_ends_of_each_range():
    t = Tolerance(max_top1_drop=0, max_logit_diff=0.0, min_top1_agreement=1, min_cosine=-1.0, max_kl=math.inf)
    assert t.limits == {"max_top1_drop": 0, "max_logit_diff": 0.0, "min_top1_agreement": 1, "min_cosine": -1.0, "max_kl": math.inf}
    assert Tolerance().limits == {} and Tolerance().check(_report()) == []


def test_check_gives_one_result_per_limit_in_order_and_a_line_for_each_miss():
    t = Tolerance(max_top1_drop=1.0, max_logit_diff=0.01, min_top1_agreement=0.9, min_cosine=0.9999, max_kl=0.01)
    results = t.check(_report(accuracy=0.875, reference_accuracy=0.90625, accuracy_delta=0.875 - 0.90625))
    assert [(r.name, r.limit, r.passed) for r in results] == [
        ("max_top1_drop", 1.0, False), ("max_logit_diff", 0.01, False), ("min_top1_agreement", 0.9, True),
        ("min_cosine", 0.9999, False), ("max_kl", 0.01, True)]
    assert results[0].value == pytest.approx(3.125) and results[3] == ToleranceResult("min_cosine", 0.9999, 0.9995, False)
    assert [r.line for r in results if not r.passed] == [
        "top-1 accuracy dropped 3.12 points, more than 1", "logits max |diff| 0.02 exceeds 0.01", "cosine 0.999500 is below 0.9999"]


def test_check_passes_at_a_limit_fails_on_nan_and_skips_accuracy_without_labels():
    at = Tolerance(max_logit_diff=0.02, min_top1_agreement=30 / 32, min_cosine=0.9995, max_kl=0.004, max_top1_drop=0.0)
    assert [r.name for r in at.check(_report())] == ["max_logit_diff", "min_top1_agreement", "min_cosine", "max_kl"]  # no labels: no drop
    assert all(r.passed for r in at.check(_report()))
    nan = at.check(_report(logits_max_abs=math.nan, cosine=math.nan))
    assert [r.name for r in nan if not r.passed] == ["max_logit_diff", "min_cosine"]


def test_tolerance_round_trips_through_json_and_refuses_unknown_or_dropped_limits():
    t = Tolerance(max_logit_diff=1e-2, min_top1_agreement=1.0, min_cosine=0.9999)
    assert Tolerance.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert list(t.to_dict()) == ["max_top1_drop", "max_logit_diff", "min_top1_agreement", "min_cosine", "max_kl"]
    assert t.to_dict("min_top1_agreement", "min_cosine", "max_logit_diff") == {
        "min_top1_agreement": 1.0, "min_cosine": 0.9999, "max_logit_diff": 1e-2}
    with pytest.raises(ValueError, match="max_logit_diff is set but not among the limits written"):
        t.to_dict("min_top1_agreement", "min_cosine")
    with pytest.raises(ValueError, match="no tolerance limit min_cosin"):
        t.to_dict("min_cosin")
    with pytest.raises(ConfigError, match="unknown tolerance limit.*'min_cosin'"):
        Tolerance.from_dict({"min_cosin": 0.9})
    with pytest.raises(ConfigError, match="--min-cosine is a|--min-cosine must be in"):
        Tolerance.from_dict({"min_cosine": 2})
    with pytest.raises(ConfigError, match="a tolerance is a JSON object"):
        Tolerance.from_dict([0.9])  # type: ignore[arg-type]


def test_the_tolerances_in_todays_files_read_and_write_back_unchanged():
    """A bundle manifest's per-precision tolerances, a plan's acceptance and a build record's
    criterion (without its images) are Tolerances written with the limits each file has always held."""
    manifest = json.loads((RECORDS / "manifest.json").read_text())
    for tol in manifest["tolerances"].values():
        assert Tolerance.from_dict(tol).to_dict(*tol) == tol and list(tol) == ["min_top1_agreement", "min_cosine", "max_logit_diff"]
    plan = json.loads((RECORDS / "plan.json").read_text())
    criterion = json.loads((RECORDS / "build_record.int8.json").read_text())["quantization"]["check"]["criterion"]
    for d in (plan["acceptance"], criterion):
        limits = {k: v for k, v in d.items() if k != "images"}
        assert Tolerance.from_dict(limits).to_dict("min_top1_agreement", "max_kl") == limits


def test_the_int8_acceptance_is_a_tolerance_on_task_metrics_that_also_refuses_nonfinite_rows():
    from tldeploy.engines.sensitivity import Acceptance, TaskMetrics

    accept = Acceptance(Tolerance(min_top1_agreement=0.99, max_kl=1e-3), "16 images from val")
    assert accept.accepts(TaskMetrics(100, 0.99, 1e-3, 0.9, 0))  # at the bar
    assert not accept.accepts(TaskMetrics(100, 0.98, 0.0, 1.0, 0)) and not accept.accepts(TaskMetrics(100, 1.0, 2e-3, 1.0, 0))
    assert not accept.accepts(TaskMetrics(1000, 0.999, 1e-4, 1.0, 1))  # one inf/NaN row refuses the mix
    assert accept.describe() == "top-1 agreement >= 99.00% and KL <= 0.001 on 16 images from val"
    assert json.dumps(accept.to_dict()) == '{"min_top1_agreement": 0.99, "max_kl": 0.001, "images": "16 images from val"}'
    assert Acceptance(Tolerance(min_top1_agreement=1.0), "x").to_dict() == {"min_top1_agreement": 1.0, "max_kl": None, "images": "x"}
    for bad in (Tolerance(max_kl=0.1), Tolerance(min_top1_agreement=0.9, min_cosine=0.9)):
        with pytest.raises(ValueError, match="an acceptance bounds top-1 agreement"):
            Acceptance(bad, "x")
