"""Detectron2's ``train.init_checkpoint`` takes a Hugging Face ViTMAE folder (the one reader)."""
from pathlib import Path

import pytest
import torch

from detectron2.config import LazyConfig, instantiate

from mae_transfer.detection.checkpointing import load_init_checkpoint

transformers = pytest.importorskip("transformers")
TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"


def test_init_checkpoint_takes_a_vitmae_for_pretraining_folder(tmp_path):
    """transformers' own ``save_pretrained`` of an MAE shaped like the mini detector's ViT
    (64-d, 4 blocks, 4 heads, patch 16): every pretrained backbone key is filled, q/k/v fused."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        image_size=64, patch_size=16, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4, decoder_intermediate_size=128, layer_norm_eps=1e-6)
    hf = transformers.ViTMAEForPreTraining(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    model = instantiate(LazyConfig.load(str(TINY)).model)
    report = load_init_checkpoint(model, str(tmp_path / "hf"))
    assert report.part == "encoder" and report.missing_pretrained == []
    assert report.layout.endswith("Hugging Face ViTMAEForPreTraining (vit.*, decoder.*)")
    assert report.resized_keys == ["pos_embed"]  # the 4x4 pretraining grid to the detector's
    net, layer = model.backbone.net, hf.vit.layers[2]
    assert torch.equal(net.blocks[2].attn.qkv.weight, torch.cat(
        [layer.attention.q_proj.weight, layer.attention.k_proj.weight,
         layer.attention.v_proj.weight]))
    assert torch.equal(net.blocks[2].mlp.fc2.bias, layer.mlp.fc2.bias)
    assert torch.equal(net.patch_embed.proj.weight,
                       hf.vit.embeddings.patch_embeddings.projection.weight)
