"""tools/demo_seg.py given a checkpoint that is no segmentor: one line naming the layout and tool.

Before: a Detectron2 detector checkpoint ended in a strict-load ``RuntimeError`` traceback.
"""
import sys

import pytest
import torch

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


@pytest.mark.parametrize("state, expected", [
    ({"model": {"backbone.net.blocks.0.attn.qkv.weight": torch.zeros(3, 2),
                "proposal_generator.rpn_head.conv.weight": torch.zeros(2),
                "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 2)}, "iteration": 9},
     "it looks like a Detectron2 detector (roi_heads.*, proposal_generator.*, "
     "backbone.bottom_up.*); draw its detections with tools/demo_det.py --weights {ckpt}"),
    ({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 2),
                "patch_embed.proj.weight": torch.zeros(2, 3, 16, 16)}},
     "it looks like a ViT backbone without segmentation heads; fine-tune it first with "
     "tools/train_seg.py CONFIG --pretrained {ckpt}"),
])
def test_a_foreign_checkpoint_is_one_line(repo_root, ade_root, tmp_path, capsys, state, expected):
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.demo_seg import main

    ckpt = tmp_path / "model_final.pth"
    torch.save(state, ckpt)
    image = sorted((ade_root / "images" / "validation").glob("*.jpg"))[0]
    assert main([TINY, str(ckpt), str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: checkpoint {ckpt} has no decode_head.* weights")
    assert expected.format(ckpt=ckpt) in err[0]
    assert not (tmp_path / "o").exists()
