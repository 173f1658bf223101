"""Intervals over seeds, against scipy's own t interval, and the interval forms of Check."""
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from deepnotes.experiments import Check, compute_verdict
from deepnotes.experiments.base import Result
from deepnotes.experiments.stats import Interval, mean_ci, paired_ci


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [0.3, 0.31, 0.29, 0.35, 0.33], [-2.0, 5.0]])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_mean_ci_is_scipys_t_interval(values, level):
    ci = mean_ci(values, level)
    low, high = scipy_stats.t.interval(level, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert ci.mean == pytest.approx(np.mean(values))
    assert (ci.low, ci.high) == (pytest.approx(low), pytest.approx(high))
    assert ci.n == len(values) and ci.level == level


def test_paired_ci_is_the_interval_of_the_differences():
    a, b = [3.0, 5.0, 4.0, 6.0], [2.5, 4.0, 3.9, 5.1]
    assert paired_ci(a, b) == mean_ci([x - y for x, y in zip(a, b)], statistic="paired difference")
    with pytest.raises(ValueError, match="pair"):
        paired_ci([1.0], [1.0, 2.0])


def test_one_seed_has_no_interval_and_nan_poisons_it():
    one = mean_ci([1.0])
    assert one.low == -math.inf and one.high == math.inf and one.n == 1
    assert math.isnan(mean_ci([1.0, math.nan, 2.0]).mean)
    with pytest.raises(ValueError):
        mean_ci([])


def test_interval_checks_compare_the_right_bound():
    ci = Interval(mean=1.0, low=0.2, high=1.8, n=4)
    above = Check.ci_above("a beats b", ci, 0.0, label="gain")
    assert above.value == 0.2 and above.op == ">" and above.passed and above.interval is ci
    assert not Check.ci_above("a beats b by 0.5", ci, 0.5).passed
    assert Check.ci_below("no worse", ci, 2.0).value == 1.8 and Check.ci_below("no worse", ci, 2.0).passed
    assert not Check.ci_below("no worse", ci, 1.0).passed
    within = Check.ci_within("tracks", Interval(0.0, -0.3, 0.1, 3), 0.25)
    assert within.value == 0.3 and not within.passed
    assert Check.ci_within("tracks", Interval(0.0, -0.2, 0.1, 3), 0.25).passed
    assert not Check.ci_above("single run", mean_ci([5.0]), 0.0).passed  # -inf never passes


def test_result_seeds_is_the_largest_interval_n():
    checks = [Check("plain", 1, "<=", 2, label="p"), Check.ci_above("x", Interval(1, 0.5, 1.5, 5), 0, label="x")]
    assert Result(metrics={}, checks=checks).seeds == 5
    assert Result(metrics={}, checks=checks[:1]).seeds == 1
    assert compute_verdict(checks) == "reproduced"


def test_check_json_carries_label_and_interval():
    data = Check.ci_above("x", mean_ci([1.0]), 0.0, label="x gain").to_json()
    assert data["label"] == "x gain" and data["value"] is None  # -inf is not JSON
    assert data["interval"]["n"] == 1 and data["interval"]["low"] is None
