"""`tldeploy shift`'s two measures against known answers on synthetic features: the Fréchet
distance of Gaussians in closed form, and the domain classifier's held-out AUC (the plumbing on
the tiny CNN is in test_ood.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tldeploy.errors import ConfigError
from tldeploy.shift import domain_auc, frechet_distance


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    """For diagonal covariances FD = |mu_a - mu_b|^2 + sum_i (sqrt(va_i) - sqrt(vb_i))^2; a sample against itself is 0."""
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, -1.0, 0.0, 3.5])
    va, vb = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 1.0, 2.25])
    a = rng.normal(mu_a, np.sqrt(va), (20000, 4))
    b = rng.normal(mu_b, np.sqrt(vb), (20000, 4))
    exact = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)  # 9.25 + 4.5
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.03)  # measured 13.69 against 13.75 (-0.4%)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + [3.0, 0.0, 0.0, 4.0]) == pytest.approx(25.0, rel=1e-5)  # a pure shift: |d|^2, less the ridge (-2.8e-5)


def test_domain_auc_is_held_out_chance_for_one_distribution_and_one_for_a_shift():
    """Two samples of one distribution, more features than rows: the held-out AUC is near 0.5 (an in-sample fit
    separates them perfectly); a mean shift of 0.5 in every feature separates them."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 200)), rng.normal(size=(40, 200))
    auc, folds = domain_auc(a, b)
    assert folds == 5 and abs(auc - 0.5) < 0.2  # measured 0.512 (seeds 0-5 of the draw: 0.45 to 0.58)
    auc, _ = domain_auc(a, rng.normal(0.5, 1.0, size=(40, 200)))
    assert auc > 0.95  # measured 1.0
    assert domain_auc(a, b[:3])[1] == 3  # no more folds than the smaller side has rows
    with pytest.raises(ConfigError, match="at least two source and two target inputs"):
        domain_auc(a, b[:1])
