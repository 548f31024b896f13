"""Segmentation's ``--pretrained`` takes a Hugging Face ViTMAE folder (the one reader)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")


def test_pretrained_takes_a_vitmae_model_folder(tmp_path):
    from mmengine.config import Config

    from mae_transfer.segmentation import entry
    from mae_transfer.segmentation.backbone import MAEViT

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                       intermediate_size=256, image_size=32, patch_size=16)
    hf = transformers.ViTMAEModel(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p))
    folder = tmp_path / "vit-mae-mini"
    hf.save_pretrained(folder)

    cfg = Config(dict(model=dict(pretrained="x", backbone=dict(type="MAEViT"))))
    entry.set_pretrained(cfg, str(folder))  # what tools/train_seg.py --pretrained does
    assert cfg.model.backbone.pretrained == str(folder)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        entry.set_pretrained(cfg, str(tmp_path / "absent"))

    vit = MAEViT(arch="vit_mini_patch16", img_size=32, norm_cfg=dict(type="BN"))
    report = vit.load_pretrained(str(folder))  # what the Runner's init_weights runs
    assert report.missing_pretrained == []  # the recipe's BEiT tables and gammas are new
    assert sorted(report.unexpected_keys) == ["norm.bias", "norm.weight"]  # final_norm=False
    assert report.notes == ["the file's config says layer_norm_eps 1e-12, the model computes "
                            "with 1e-06"]
    layer = hf.layers[3]
    assert torch.equal(vit.blocks[3].attn.qkv.bias, torch.cat(
        [layer.attention.q_proj.bias, layer.attention.k_proj.bias, layer.attention.v_proj.bias]))
    assert torch.equal(vit.blocks[3].norm1.weight, layer.layernorm_before.weight)
