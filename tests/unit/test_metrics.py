"""Metric values on fixed predictions, computed by hand: the classification metrics of
`tldeploy.train.metrics` and the parity metrics of `tldeploy.parity`."""

import numpy as np
import pytest

from tldeploy.parity import Tolerance, cam_correlation, cam_top_iou, compare_outputs, kl_divergence
from tldeploy.train.metrics import classification_metrics

# true \ predicted   a  b  c
#   a                3  1  0
#   b                1  2  0
#   c                0  1  2
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 0, 1, 1, 1, 2, 2])
CLASSES = ["a", "b", "c"]


def _probs(pred, n_classes, top=0.6):
    """0.6 on the predicted class, the rest shared evenly."""
    p = np.full((len(pred), n_classes), (1 - top) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def test_classification_metrics_of_a_fixed_confusion_matrix():
    m = classification_metrics(Y_TRUE, _probs(Y_PRED, 3), CLASSES)
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]] and m["n"] == 10 and m["classes"] == CLASSES
    assert m["accuracy"] == pytest.approx(0.7)
    precision, recall = [3 / 4, 2 / 4, 2 / 2], [3 / 4, 2 / 3, 2 / 3]  # columns, rows of the matrix
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]  # 0.75, 4/7, 0.8
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c] == pytest.approx({"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": [4, 3, 3][i]})
    assert m["precision_macro"] == pytest.approx(0.75) and m["recall_macro"] == pytest.approx(25 / 36)
    assert m["f1_macro"] == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    assert m["log_loss"] == pytest.approx(-(7 * np.log(0.6) + 3 * np.log(0.2)) / 10)
    # one vs rest, scores 0.6 or 0.2, ties count half: a 19/24, b 14.5/21, c 17.5/21
    assert m["roc_auc_ovr"] == pytest.approx((19 / 24 + 14.5 / 21 + 17.5 / 21) / 3)


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")  # log_loss on the doubled scores
def test_roc_auc_normalises_scores_and_is_none_without_every_class():
    probs = _probs(Y_PRED, 3)
    assert classification_metrics(Y_TRUE, 2 * probs, CLASSES)["roc_auc_ovr"] == pytest.approx((19 / 24 + 14.5 / 21 + 17.5 / 21) / 3)
    absent = classification_metrics(Y_TRUE[:7], probs[:7], CLASSES)  # no true "c"
    assert absent["roc_auc_ovr"] is None and absent["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert absent["confusion_matrix"][2] == [0, 0, 0] and absent["precision_macro"] == pytest.approx((3 / 4 + 2 / 3 + 0) / 3)


def test_binary_roc_auc_is_of_the_second_class_score():
    p1 = np.array([0.1, 0.6, 0.4, 0.8])  # positives score 0.4 and 0.8, negatives 0.1 and 0.6: 3 of 4 pairs ordered
    m = classification_metrics(np.array([0, 0, 1, 1]), np.stack([1 - p1, p1], axis=1), ["neg", "pos"])
    assert m["roc_auc_ovr"] == pytest.approx(0.75) and m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["pos"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})


# ------------------------------------------------------------ parity


REF_LOGITS = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
OUT_LOGITS = np.array([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]])  # cosines 0, 1, 24/25; top-1: 0/1, 0/0, 1/0


def _outputs(logits, probs, cam):
    return {"logits": logits, "probs": probs, "cam": cam}


def test_parity_values_by_hand():
    ref_p = np.array([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]])
    out_p = np.array([[0.5, 0.5], [0.5, 0.5], [0.875, 0.125]])
    cam = np.zeros((3, 2, 2))
    out_cam = cam.copy()
    out_cam[1, 0, 1] = -0.5
    r = compare_outputs(_outputs(REF_LOGITS, ref_p, cam), _outputs(OUT_LOGITS, out_p, out_cam), labels=np.array([1, 0, 0]))
    assert r.n == 3 and r.cosine == pytest.approx((0 + 1 + 24 / 25) / 3)
    assert r.logits_max_abs == 2.0 and r.logits_mean_abs == pytest.approx(7 / 6)  # |diff| 1, 2, 1, 1, 1, 1
    assert r.probs_max_abs == 0.25 and r.probs_mean_abs == pytest.approx(0.75 / 6)  # 0, 0, .25, .25, .125, .125
    assert r.cam_max_abs == 0.5 and r.top1_agreement == pytest.approx(1 / 3)
    assert r.accuracy == pytest.approx(1.0) and r.reference_accuracy == pytest.approx(1 / 3) and r.accuracy_delta == pytest.approx(2 / 3)
    kl_row2 = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    kl_row3 = 1.0 * np.log(1 / 0.875) + 1e-12 * np.log(1e-12 / 0.125)  # a zero probability is clipped, not log(0)
    assert r.kl_divergence == pytest.approx((0 + kl_row2 + kl_row3) / 3)
    assert r and not r.failures and r.max_logit_tolerance is None
    assert compare_outputs(_outputs(REF_LOGITS, ref_p, cam), _outputs(OUT_LOGITS, out_p, out_cam)).accuracy is None


def test_cosine_is_scale_free_signed_and_zero_for_a_zero_vector():
    probs, cam = np.full((2, 2), 0.5), np.zeros((2, 1, 1))
    a = np.array([[3.0, 4.0], [1.0, -2.0]])

    def cos(x, y):
        return compare_outputs(_outputs(x, probs, cam), _outputs(y, probs, cam)).cosine

    assert cos(a, 10 * a) == pytest.approx(1.0) and cos(a, -a) == pytest.approx(-1.0)
    assert cos(a, np.array([[4.0, -3.0], [2.0, 1.0]])) == pytest.approx(0.0)
    assert cos(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])) == 0.5  # 0 (not nan) and 1
    assert cos(1e-3 * a, 2e-3 * a) == pytest.approx(1.0)  # small logits are not "zero"


def test_cam_metrics_of_compare_outputs():
    probs, logits = np.full((2, 2), 0.5), np.ones((2, 2))
    cam = np.arange(2 * 5 * 2, dtype=float).reshape(2, 5, 2) + 1.0  # 10 cells an image, rising
    flipped = cam[:, ::-1, ::-1].copy()  # the same values, falling: the top 20% are the other 2 cells
    r = compare_outputs(_outputs(logits, probs, cam), _outputs(logits, probs, flipped))
    assert r.cam_max_abs == 9.0 and r.cam_correlation == pytest.approx(-1.0) and r.cam_iou_top20 == 0.0
    same = compare_outputs(_outputs(logits, probs, cam), _outputs(logits, probs, 1e-3 * cam))  # small maps: not flat
    assert same.cam_correlation == pytest.approx(1.0) and same.cam_iou_top20 == 1.0
    assert cam_correlation(1e-3 * cam, cam) == pytest.approx(1.0)
    assert cam_correlation(1.0 + 1e-14 * cam, cam) == 0.0  # flat to rounding: a constant map, which agrees only with one


def test_parity_table_prints_every_metric():
    probs, cam = np.full((3, 2), 0.5), np.zeros((3, 1, 1))
    r = compare_outputs(_outputs(REF_LOGITS, probs, cam), _outputs(OUT_LOGITS, probs, cam), labels=np.array([1, 0, 0]),
                        tolerance=Tolerance(max_logit_diff=1.5))
    assert r.table() == "\n".join([
        "parity",
        "  images                 3",
        "  logits max |diff|      2",
        "  logits mean |diff|     1.17",
        "  probs max |diff|       0",
        "  probs mean |diff|      0",
        "  cosine (logits)        0.653333",
        "  top-1 agreement        33.33%",
        "  KL divergence (probs)  0",
        "  CAM max |diff|         0",
        "  CAM correlation        1.0000",
        "  CAM top-20% IoU        1.0000",
        "  accuracy (reference)   1.0000 (0.3333, +0.6667)",
        "  FAIL: logits max |diff| 2 exceeds 1.5",
    ])


def test_parity_tolerances_are_strict_bounds_with_a_line_each():
    probs, cam = np.full((3, 2), 0.5), np.zeros((3, 1, 1))
    ref, out = _outputs(REF_LOGITS, probs, cam), _outputs(OUT_LOGITS, probs, cam)
    assert compare_outputs(ref, out, tolerance=Tolerance(max_logit_diff=2.0, min_top1_agreement=1 / 3)).failures == []  # at the bounds: passes
    r = compare_outputs(ref, out, tolerance=Tolerance(max_logit_diff=1.5, min_top1_agreement=0.5))
    assert r.failures == ["logits max |diff| 2 exceeds 1.5", "top-1 agreement 33.33% is below 50.00%"] and not r
    assert (r.max_logit_tolerance, r.min_top1_agreement) == (1.5, 0.5)
    table = r.table("tiny")
    assert table.splitlines()[0] == "tiny" and "cosine (logits)" in table and "0.653333" in table
    assert table.splitlines()[-2:] == ["  FAIL: logits max |diff| 2 exceeds 1.5", "  FAIL: top-1 agreement 33.33% is below 50.00%"]
    assert r.to_dict()["failures"] == r.failures
    with pytest.raises(ValueError, match=r"logits shapes differ: \(3, 2\) vs \(2, 2\)"):
        compare_outputs(ref, _outputs(OUT_LOGITS[:2], probs[:2], cam[:2]))


def test_kl_and_top_region_edges():
    p = np.array([[0.25, 0.75]])
    assert kl_divergence(p, p) == 0.0
    assert kl_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(np.log(1 / 1e-12) + 1e-12 * np.log(1e-12))
    # 3 cells: the top 20% is round(0.6) = 1 cell, at least one
    assert cam_top_iou(np.array([[3.0, 2.0, 1.0]]), np.array([[1.0, 2.0, 3.0]])) == 0.0
    assert cam_top_iou(np.array([[3.0, 2.0, 1.0]]), np.array([[3.0, 1.0, 2.0]])) == 1.0
    assert cam_top_iou(np.array([[1.0, 1.0, 1.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 1.0, 1.0, 1.0]]), share=0.4) == pytest.approx(1 / 3)
    ties = np.ones((1, 40))  # all equal: the top 20% are the first 8 cells, on either side
    first = np.zeros((1, 40))
    first[0, :8] = 1.0
    assert cam_top_iou(ties, first) == 1.0 and cam_top_iou(first, ties) == 1.0
