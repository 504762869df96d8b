"""sftlab.stats against independent computations: scipy's procedures as we call them, and our Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sftlab.stats import DEFAULT_CONFIDENCE, MeanCI, bh, bootstrap_ci, holm, mean_ci, paired_bootstrap_ci, t_test_p


def test_holm_and_bh_match_the_textbook_step_procedures() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4, running min from the top
    assert bh(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == [] and bh([]) == []


def test_bootstrap_ci_is_the_seeded_percentile_bootstrap() -> None:
    values = np.random.default_rng(3).random(30)
    draws = np.random.default_rng(0).integers(0, 30, (500, 30))
    expected = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
    assert bootstrap_ci(values.tolist(), 500, DEFAULT_CONFIDENCE, seed=0) == pytest.approx(tuple(expected), rel=1e-12)
    assert bootstrap_ci([0.5], 100, DEFAULT_CONFIDENCE) == (0.5, 0.5)  # one item: nothing to resample
    base = np.random.default_rng(4).random(30)
    diff = np.quantile((values - base)[draws].mean(axis=1), [0.025, 0.975])
    paired = paired_bootstrap_ci(values.tolist(), base.tolist(), 500, DEFAULT_CONFIDENCE, seed=0)
    assert paired == pytest.approx(tuple(diff), rel=1e-12)


def test_mean_ci_and_t_test() -> None:
    values = [0.1, 0.3, 0.2, 0.6]
    ci = mean_ci(values, 0.9)
    assert ci is not None
    half = 2.353363434801823 * np.std(values, ddof=1) / 2  # t(0.95; 3 df), n = 4
    assert (ci.low, ci.high) == pytest.approx((0.3 - half, 0.3 + half), rel=1e-12)
    assert mean_ci([1.0, 1.0], 0.95) == MeanCI(1.0, 1.0, 1.0, 2)  # no spread: a zero-width interval
    assert mean_ci([1.0], 0.95) == MeanCI(1.0, math.nan, math.nan, 1)
    assert mean_ci([None, math.nan], 0.95) is None
    assert t_test_p([0.0, 0.0]) == 1.0 and t_test_p([1.0, 1.0]) == 0.0 and math.isnan(t_test_p([1.0]))
    from scipy.special import stdtr

    t = 0.3 / (np.std(values, ddof=1) / 2)
    assert t_test_p(values) == pytest.approx(2 * stdtr(3, -t), rel=1e-12)
