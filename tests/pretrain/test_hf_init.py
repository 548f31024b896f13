"""Pretraining's ``--init`` takes a Hugging Face ``ViTMAEForPreTraining`` folder, end to end."""
import pytest
import torch

from mae_transfer.backbones.hf_layout import from_hf
from mae_transfer.pretrain.main import main
from mae_transfer.tools.checkpoints import read_checkpoint
from mae_transfer.tools.synthetic_data import write_synthetic_images

transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_cli_init_from_a_vitmae_folder_starts_from_its_encoder_and_decoder(tmp_path):
    """A folder shaped like ``mae_vit_mini_patch16`` at 32 px (transformers' own
    ``save_pretrained``); lr 0, so the run's exported encoder is the folder's, and its last
    checkpoint holds the folder's decoder."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
        image_size=32, patch_size=16, decoder_hidden_size=64, decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4, decoder_intermediate_size=256, layer_norm_eps=1e-6)
    hf = transformers.ViTMAEForPreTraining(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not name.endswith(("position_embeddings", "decoder_pos_embed")):
                p.copy_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "hf")
    expected = from_hf(hf.state_dict())

    images = write_synthetic_images(tmp_path / "imgs", count=8, size=(40, 40))
    out = tmp_path / "run"
    assert main(["--data_path", str(images), "--model", "mae_vit_mini_patch16", "--input_size",
                 "32", "--device", "cpu", "--num_workers", "0", "--vis_every", "0",
                 "--batch_size", "4", "--epochs", "1", "--steps_per_epoch", "1",
                 "--warmup_epochs", "0", "--lr", "0", "--output_dir", str(out),
                 "--init", str(tmp_path / "hf")]) == 0
    encoder, meta = read_checkpoint(out / "encoder.safetensors")
    assert meta["init_checkpoint"] == str(tmp_path / "hf")
    for key in ("blocks.3.attn.qkv.weight", "patch_embed.proj.weight", "norm.bias"):
        assert torch.equal(encoder[key], expected[key]), key
    run, _ = read_checkpoint(out / "checkpoint-last.pth")
    for key in ("decoder_blocks.1.attn.qkv.bias", "decoder_pred.weight", "mask_token"):
        assert torch.equal(run[key], expected[key]), key
    log = (out / "train.log").read_text()
    assert "Hugging Face folder (config.json, model.safetensors)" in log
