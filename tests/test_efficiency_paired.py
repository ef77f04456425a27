"""The replay test's statistics (benchmarks/efficiency_paired.py): interpolated
rollouts-to-T, the area under the accuracy curve, and paired differences."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # after site-packages
import efficiency_paired as ep  # noqa: E402


def rows(*points: tuple[int, float]) -> list[dict]:
    return [{"step": i, "rollouts": x, "eval/accuracy": a} for i, (x, a) in enumerate(points)]


def test_rollouts_to_target_interpolate_the_two_evaluation_mean():
    run = rows((0, 0.30), (256, 0.30), (512, 0.38), (768, 0.44), (1024, 0.44))
    # smoothed: (128, .30) (384, .34) (640, .41) (896, .44): 0.40 between 384 and 640
    assert ep.interpolated_rollouts_to(run, 0.40) == pytest.approx(384 + 0.06 / 0.07 * 256)
    assert ep.interpolated_rollouts_to(run, 0.30) == 128
    assert ep.interpolated_rollouts_to(run, 0.45) is None
    # one lucky evaluation does not reach T on its own
    assert ep.interpolated_rollouts_to(rows((0, 0.3), (256, 0.5), (512, 0.3)), 0.45) is None


def test_auc_is_the_mean_accuracy_over_the_budget():
    run = rows((0, 0.2), (100, 0.4), (200, 0.4))
    assert ep.auc(run, 200) == pytest.approx((100 * 0.3 + 100 * 0.4) / 200)
    assert ep.auc(run, 400) == pytest.approx((100 * 0.3 + 300 * 0.4) / 400)  # held flat
    assert ep.auc(rows((50, 0.2), (100, 0.4)), 100) is None  # no base evaluation


def test_paired_differences_and_their_standard_error():
    pair = ep.paired({0: 10.0, 1: 14.0, 2: 9.0}, {0: 12.0, 1: 15.0, 2: 12.0, 3: 1.0})
    assert pair is not None and pair.seeds == 3  # seed 3 has no partner
    assert pair.diff_mean == pytest.approx(-2.0)
    assert pair.diff_se == pytest.approx(math.sqrt(1.0 / 3))  # diffs -2, -1, -3
    assert pair.z == pytest.approx(-2.0 / math.sqrt(1.0 / 3))
    assert ep.paired({0: 1.0}, {1: 1.0}) is None
    one = ep.paired({0: 2.0}, {0: 1.0})
    assert one is not None and math.isnan(one.z)  # one seed: no standard error, no verdict


def test_nothing_past_the_budget_counts():
    # a dynamic-sampling run samples past the budget in the iterations the others take
    run = rows((0, 0.2), (100, 0.3), (200, 0.35), (300, 0.36), (400, 0.9), (500, 0.9))
    assert ep.plateau_accuracy(ep.within(run, 300)) == pytest.approx((0.3 + 0.35 + 0.36) / 3)
    assert ep.interpolated_rollouts_to(ep.within(run, 300), 0.5) is None
    assert ep.interpolated_rollouts_to(run, 0.5) is not None
