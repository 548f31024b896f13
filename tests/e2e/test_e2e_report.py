"""The e2e run's verdict logic: mean, spread and margin over seeds, and the COCO NaN rule."""
import math

import pytest

from mae_transfer.experiment.driver import ap_or_zero, compare, summarise


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


def test_det_model_settings_build_the_detector_with_the_asked_widths():
    """The e2e run's head-width settings reach the model (training and the demo pictures share
    them, so the demo can load the trained weights)."""
    from mae_transfer import detection

    detection.setup()  # before any detectron2 import
    from detectron2.config import LazyConfig, instantiate

    from mae_transfer.experiment.driver import (DET_CONFIG, REPO, det_model_settings,
                                                render_overrides)

    cfg = dict(arch="vit_mini_patch16", det_channels=48, det_fc=96)
    overrides = render_overrides(det_model_settings(cfg, num_classes=5))
    model = instantiate(LazyConfig.apply_overrides(LazyConfig.load(str(REPO / DET_CONFIG)),
                                                   overrides).model)
    heads = model.roi_heads
    assert model.backbone.output_shape()["p2"].channels == 48
    assert heads.box_head.fc1.out_features == 96
    assert [m.out_channels for m in heads.box_head.conv_norm_relus] == [48, 48]
    assert heads.box_predictor.cls_score.out_features == 5 + 1
    assert heads.mask_head.predictor.out_channels == 5
    # Detectron2's mask head: conv_dims[:-1] are the convs, the last is the upsampling deconv
    assert [m.out_channels for m in heads.mask_head.conv_norm_relus] == [48, 48]
    assert heads.mask_head.deconv.out_channels == 48
