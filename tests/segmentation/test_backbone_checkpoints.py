"""MAEViT's pretrained weights: a file that does not fill the ViT stops the run (init_weights)."""
from __future__ import annotations

import pytest
import torch

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)
from mae_transfer.segmentation.backbone import MAEViT
from mae_transfer.tools.checkpoints import CheckpointError

BN = dict(type="BN", requires_grad=True)


@pytest.mark.parametrize("state, layout", [
    ({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer4.1.bn2.weight": torch.ones(8),
      "fc.weight": torch.zeros(10, 8)}, "a torchvision/timm classifier"),
    ({"backbone.layers.0.attn.attn.in_proj_weight": torch.zeros(192, 64),
      "backbone.cls_token": torch.zeros(1, 1, 64), "backbone.pos_embed": torch.zeros(1, 17, 64),
      "decode_head.conv_seg.weight": torch.zeros(150, 64, 1, 1)},
     "an MMSeg VisionTransformer"),
])
def test_init_weights_stops_on_a_file_that_fills_no_block(tmp_path, state, layout):
    """Before: cls_token/pos_embed were enough; the run went on from random init with warnings."""
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": state}, path)
    model = MAEViT("vit_mini_patch16", img_size=64, norm_cfg=BN, pretrained=str(path))
    with pytest.raises(CheckpointError) as err:
        model.init_weights()
    msg = str(err.value)
    assert "\n" not in msg and f"looks like {layout}" in msg
    assert "python tools/convert_checkpoint.py SRC DST --to ours" in msg
    assert not model.is_init


def test_recipe_attention_from_mae_pretraining_lacks_only_tables_and_gammas(mae_checkpoint):
    """The ADE20K configs' BEiT tables and layer scale are new in fine-tuning, as in MMSeg."""
    model = MAEViT("vit_mini_patch16", img_size=64, norm_cfg=BN, rel_pos_type="beit",
                   layer_scale_init=1.0, pretrained=str(mae_checkpoint))
    model.init_weights()
    report = model.load_report
    assert sorted({k.split(".", 2)[-1] for k in report.missing_keys}) == [
        "attn.relative_position_bias_table", "gamma_1", "gamma_2"]
    assert len(report.missing_keys) == 3 * 4
    assert torch.all(model.blocks[0].gamma_1 == 1.0)
    assert not model.blocks[0].attn.relative_position_bias_table.any()
