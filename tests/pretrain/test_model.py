"""The MAE model: its encoder is the shared ViT, decoder names are official MAE's, shapes hold."""
import pytest
import torch

from mae_transfer.backbones import build_vit
from mae_transfer.pretrain.main import build_optimizer
from mae_transfer.pretrain.masking import num_visible
from mae_transfer.pretrain.model import MAE_MODELS, build_mae, mae_from_config
from mae_transfer.pretrain.restore import infer_config
from mae_transfer.backbones.pos_embed import sincos_2d


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return build_mae("mae_vit_mini_patch16", img_size=64)


def test_encoder_is_the_shared_vit(mae):
    """No masking + identity order: the MAE encoder computes exactly ViT.forward_features."""
    x = torch.randn(2, 3, 64, 64)
    noise = torch.arange(16.0).expand(2, 16)
    latent, mask, _ = mae.forward_encoder(x, 0.0, noise)
    assert mask.sum() == 0
    assert torch.equal(latent, mae.forward_features(x))
    vit = build_vit("vit_mini_patch16", img_size=64)
    vit.load_state_dict(mae.encoder_state_dict(), strict=True)
    assert torch.allclose(vit.forward_features(x), latent, atol=1e-6)


def test_encoder_sees_visible_patches_only(mae):
    x = torch.randn(3, 3, 64, 64)
    latent, mask, ids_restore = mae.forward_encoder(x, 0.75, torch.rand(3, 16))
    assert latent.shape == (3, 1 + num_visible(16, 0.75), 64)
    out = mae(x, 0.75, torch.rand(3, 16))
    assert out.pred.shape == (3, 16, 16 * 16 * 3)
    assert out.mask.shape == (3, 16) and out.loss.ndim == 0


def test_state_dict_names_mirror_official_mae(mae):
    keys = set(mae.state_dict())
    encoder_keys = set(build_vit("vit_mini_patch16", img_size=64).state_dict())
    assert encoder_keys <= keys
    decoder = keys - encoder_keys
    assert {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
            "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
            "decoder_pred.bias", "decoder_blocks.1.attn.qkv.weight",
            "decoder_blocks.0.mlp.fc2.bias"} <= decoder
    assert all(k == "mask_token" or k.startswith("decoder_") for k in decoder)
    assert set(mae.encoder_state_dict()) == encoder_keys


def test_position_embeddings_fixed_sincos_and_frozen(mae):
    assert not mae.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert torch.equal(mae.pos_embed, sincos_2d(64, (4, 4)))
    assert torch.equal(mae.decoder_pos_embed, sincos_2d(64, (4, 4)))
    opt = build_optimizer(mae, type("A", (), {"weight_decay": 0.05, "lr": 1e-3})(),
                          torch.device("cpu"))
    in_opt = {n for g in opt.param_groups for n in g["param_names"]}
    assert "pos_embed" not in in_opt and "decoder_pos_embed" not in in_opt
    no_wd = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in g["param_names"]}
    # Official MAE (timm add_weight_decay, no skip list): 1-D and biases only; tokens decayed.
    assert {"norm.weight", "blocks.0.attn.qkv.bias", "decoder_norm.bias"} <= no_wd
    assert not {"blocks.0.attn.qkv.weight", "cls_token", "mask_token"} & no_wd
    assert all(g["lr_scale"] == 1.0 for g in opt.param_groups)  # no layer decay in pretraining


def test_gradients_reach_encoder_decoder_and_mask_token(mae):
    mae.zero_grad()
    mae(torch.randn(2, 3, 64, 64), 0.75).loss.backward()
    for name in ("patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight",
                 "mask_token", "decoder_pred.weight"):
        assert dict(mae.named_parameters())[name].grad.abs().sum() > 0, name


def test_mask_tokens_in_encoder_variant():
    torch.manual_seed(0)
    m = build_mae("mae_vit_mini_patch16", img_size=64, mask_tokens_in_encoder=True)
    latent, mask, _ = m.forward_encoder(torch.randn(2, 3, 64, 64), 0.75, torch.rand(2, 16))
    assert latent.shape == (2, 17, 64) and mask.sum() == 2 * 12
    assert torch.isfinite(m(torch.randn(2, 3, 64, 64)).loss)
    assert "encoder_mask_token" not in m.encoder_state_dict()


def test_config_rebuilds_the_same_model(mae):
    clone = mae_from_config(mae.config)
    clone.load_state_dict(mae.state_dict(), strict=True)
    inferred = infer_config(mae.state_dict())
    for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
              "decoder_depth", "decoder_num_heads"):
        assert inferred[k] == mae.config[k], k


@pytest.mark.parametrize("name", sorted(MAE_MODELS))
def test_named_models_have_the_paper_sizes(name):
    from mae_transfer.pretrain.model import mae_config
    cfg = mae_config(name)
    if name in ("mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"):
        assert (cfg["decoder_embed_dim"], cfg["decoder_depth"]) == (512, 8)
    assert cfg["decoder_embed_dim"] % cfg["decoder_num_heads"] == 0


def test_window_attention_refused():
    with pytest.raises(ValueError, match="global attention"):
        build_mae("mae_vit_mini_patch16", img_size=64, window_size=2)


def test_wrong_input_size_is_a_clear_error(mae):
    with pytest.raises(ValueError, match="patch grid"):
        mae(torch.randn(1, 3, 96, 96))
