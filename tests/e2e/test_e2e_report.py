"""The e2e run's verdict logic: mean, spread and margin over seeds, and the COCO NaN rule."""
import math

import pytest

from experiment.driver import ap_or_zero, compare, summarise


def test_summarise_uses_sample_std_and_keeps_seeds():
    s = summarise([1.0, 2.0, 6.0])
    assert s["mean"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2))
    assert (s["min"], s["max"], s["per_seed"]) == (1.0, 6.0, [1.0, 2.0, 6.0])
    assert summarise([4.0])["std"] == 0.0


def _per_init(mae, random):
    return {"mae": {k: summarise(mae) for k in ("box_AP", "mask_AP", "mIoU")},
            "random": {k: summarise(random) for k in ("box_AP", "mask_AP", "mIoU")}}


def test_mae_wins_only_when_the_margin_exceeds_the_spread():
    clear = compare(_per_init([10.0, 11.0, 12.0], [1.0, 2.0, 3.0]))["box_AP"]
    assert clear["margin"] == pytest.approx(9.0)
    assert clear["spread"] == pytest.approx(1.0)
    assert clear["mae_wins"] and clear["ranges_disjoint"]
    # ahead on average, but by less than the seeds scatter: not a win
    noisy = compare(_per_init([0.0, 5.0, 10.0], [3.0, 4.0, 5.0]))["mIoU"]
    assert noisy["margin"] == pytest.approx(1.0) and noisy["spread"] == pytest.approx(5.0)
    assert not noisy["mae_wins"] and not noisy["ranges_disjoint"]
    behind = compare(_per_init([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]))["mask_AP"]
    assert behind["margin"] == pytest.approx(-1.0) and not behind["mae_wins"]


def test_no_predictions_count_as_zero_ap():
    assert ap_or_zero(float("nan")) == 0.0
    assert ap_or_zero(None) == 0.0
    assert ap_or_zero(12.5) == 12.5
