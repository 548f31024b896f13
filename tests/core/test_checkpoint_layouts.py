"""Checkpoints in foreign layouts: read when we know them, refused by name when they do not fit."""
import subprocess
import sys

import pytest
import torch

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.tools.checkpoints import CheckpointError, read_checkpoint, write_checkpoint

CONVERT = "python tools/convert_checkpoint.py SRC DST --to ours"


def _mini(**kw):
    return build_vit("vit_mini_patch16", img_size=64, **kw)


def _beit(**kw):
    return _mini(use_rel_pos=True, rel_pos_type="beit", layer_scale_init=1.0, **kw)


def _randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def _classifier_state():
    """A torchvision ResNet-like state dict (that happens to share no ViT name)."""
    return {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8),
            "layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3), "fc.weight": torch.zeros(10, 8),
            "fc.bias": torch.zeros(10)}


@pytest.mark.parametrize("state,layout", [
    (_classifier_state(), "a torchvision/timm classifier"),
    ({"backbone.bottom_up.res2.0.conv1.weight": torch.zeros(4, 4, 1, 1),
      "roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 4)}, "a Detectron2 detector"),
    ({"backbone.layers.0.attn.attn.in_proj_weight": torch.zeros(192, 64),
      "backbone.pos_embed": torch.zeros(1, 17, 64),
      "backbone.cls_token": torch.zeros(1, 1, 64)}, "an MMSeg VisionTransformer"),
])
def test_a_file_that_fills_no_block_is_refused_naming_its_layout(tmp_path, state, layout):
    """Before: cls_token/pos_embed overlap was enough to 'load' and train on from random init."""
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(_mini(), path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert f"looks like {layout}" in msg and CONVERT in msg


def test_a_file_that_fills_less_than_half_of_the_blocks_is_refused(tmp_path):
    source = _mini().state_dict()
    one_block = {k: v for k, v in source.items() if not k.startswith("blocks.")
                 or k.startswith("blocks.0.")}  # 1 of 4 blocks
    path = write_checkpoint(one_block, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match=r"fills only 12 of this ViT's 48 block tensors"):
        load_pretrained(_mini(), path)
    two_blocks = {k: v for k, v in source.items() if not k.startswith(("blocks.2.", "blocks.3."))}
    path = write_checkpoint(two_blocks, tmp_path / "half.safetensors")
    report = load_pretrained(_mini(), path)  # half the blocks: a shallower model's, allowed
    assert len(report.missing_keys) == 24


def test_new_tables_and_gammas_do_not_count_as_unfilled(tmp_path):
    """A plain MAE encoder fills a BEiT model: its tables and gammas are new in fine-tuning."""
    path = write_checkpoint(_randomized(_mini()).state_dict(), tmp_path / "mae.safetensors")
    report = load_pretrained(_beit(), path)
    assert sorted({k.split(".", 2)[-1] for k in report.missing_keys}) == [
        "attn.relative_position_bias_table", "gamma_1", "gamma_2"]


def test_the_other_relative_position_kind_is_refused_both_ways(tmp_path):
    beit = write_checkpoint(_beit().state_dict(), tmp_path / "beit.safetensors")
    decomposed = write_checkpoint(_mini(use_rel_pos=True).state_dict(), tmp_path / "d.safetensors")
    with pytest.raises(CheckpointError, match="rel_pos_type='beit' relative position tables, "
                                              "the model rel_pos_type='decomposed'"):
        load_pretrained(_mini(use_rel_pos=True), beit)
    with pytest.raises(CheckpointError, match="build the model with rel_pos_type='decomposed'"):
        load_pretrained(_beit(), decomposed)


def test_beit_tables_of_another_grid_are_resized_at_load(tmp_path):
    from mae_transfer.backbones.pos_embed import resize_beit_table

    source = _randomized(_beit()).state_dict()
    path = write_checkpoint(source, tmp_path / "beit64.safetensors")
    big = build_vit("vit_mini_patch16", img_size=128, use_rel_pos=True, rel_pos_type="beit",
                    layer_scale_init=1.0)
    report = load_pretrained(big, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    key = "blocks.2.attn.relative_position_bias_table"
    assert key in report.resized_keys
    assert big.state_dict()[key].shape == (15 * 15 + 3, 4)
    assert torch.equal(big.state_dict()[key], resize_beit_table(source[key], (8, 8)))


def test_mmseg_layout_round_trips_and_folds_qv_biases():
    from mae_transfer.backbones.beit_layout import from_mmseg_beit, to_mmseg_beit

    state = _randomized(_beit()).state_dict()
    mm = to_mmseg_beit(state)
    assert "layers.0.ffn.layers.0.0.weight" in mm and "patch_embed.projection.weight" in mm
    assert "ln1.weight" in mm  # the final norm
    assert mm["layers.1.attn.relative_position_index"].shape == (17, 17)
    back, dropped = from_mmseg_beit(mm)
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    assert len(dropped) == 4  # the derived index buffers
    q, v = torch.randn(64), torch.randn(64)
    unilm = {"blocks.0.attn.q_bias": q, "blocks.0.attn.v_bias": v}
    folded, _ = from_mmseg_beit(unilm)
    assert torch.equal(folded["blocks.0.attn.qkv.bias"], torch.cat([q, torch.zeros(64), v]))


def test_decomposed_model_to_mmseg_mae_is_an_error_that_says_why(tmp_path, repo_root):
    src = write_checkpoint(_mini(use_rel_pos=True).state_dict(), tmp_path / "vitdet.safetensors")
    run = subprocess.run([sys.executable, "tools/convert_checkpoint.py", str(src),
                          str(tmp_path / "out.pth"), "--to", "mmseg-mae"],
                         cwd=repo_root, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "decomposed relative position bias" in run.stderr and "no conversion" in run.stderr
    assert not (tmp_path / "out.pth").exists()


def test_plain_encoder_converts_to_mmseg_mae_and_back(tmp_path):
    """An MAE pretraining encoder (no tables, no gammas) in MMSeg MAE names: what MMSeg's MAE
    recipe fine-tunes from; the tables and gammas are MMSeg's to initialise."""
    from mae_transfer.backbones.beit_layout import from_mmseg_beit

    state = _randomized(_mini()).state_dict()
    path = write_checkpoint(state, tmp_path / "mae_mmseg.pth", "mmseg-mae")
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("backbone.") for k in raw)  # what MAE's init_cfg loads
    assert "layers.3.ln2.bias" in raw and "layers.3.gamma_1" not in raw
    back, _ = read_checkpoint(path)
    assert from_mmseg_beit(back)[0].keys() == state.keys()
    report = load_pretrained(_mini(), path)
    assert report.missing_keys == [] and report.unexpected_keys == []
