"""Hugging Face ``transformers`` ViTMAE / ViT checkpoints in (the one reader) and out (``--to hf``).

Every comparison is with transformers' own model (installed), computing on tiny configs: the
same encoder output and the same MAE loss for the same masking noise, in both directions.
"""
import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mae_transfer.backbones import build_vit, load_pretrained  # noqa: E402
from mae_transfer.backbones.checkpoint_reader import read_weights  # noqa: E402
from mae_transfer.backbones.hf_layout import NORM_EPS, from_hf, to_hf  # noqa: E402
from mae_transfer.backbones.pos_embed import sincos_2d  # noqa: E402
from mae_transfer.backbones.vit import VisionTransformer  # noqa: E402
from mae_transfer.pretrain.init import init_from_checkpoint  # noqa: E402
from mae_transfer.pretrain.model import MaskedAutoencoderViT  # noqa: E402
from mae_transfer.tools.checkpoints import CheckpointError, write_checkpoint  # noqa: E402
from mae_transfer.tools.convert_checkpoint import convert, main as convert_main  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

#: A tiny ViTMAE: 64-d, 2 blocks, 4 heads, 32 px images of 8 px patches (a 4x4 grid), and a
#: decoder of the same width, so that the standard head count (64-d: 4) also fits it.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            image_size=32, patch_size=8, decoder_hidden_size=64, decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4, decoder_intermediate_size=256)
NUM_PATCHES = 16
HUB_EPS = 1e-12  # what the hub's ViTMAE configs say (ViTMAEConfig's default)


def hf_mae(eps=NORM_EPS, norm_pix_loss=False, seed=0, cls=None):
    """A transformers ``ViTMAEForPreTraining`` (or ``cls``) with random weights everywhere and
    MAE's fixed sin-cos position tables (as the released checkpoints hold them)."""
    cls = cls or transformers.ViTMAEForPreTraining
    torch.manual_seed(seed)
    model = cls(transformers.ViTMAEConfig(**TINY, layer_norm_eps=eps,
                                          norm_pix_loss=norm_pix_loss)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name and name.endswith(
                "weight") else 0.0))
        for name, p in model.named_parameters():
            if name.endswith(("position_embeddings", "decoder_pos_embed")):
                p.copy_(sincos_2d(p.shape[-1], (4, 4)))
    return model


def images(seed=1, batch=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def unmasked(x):
    """transformers' ViTMAE always masks: ratio 0 and sorted noise keep every patch in order."""
    return dict(pixel_values=x, noise=torch.arange(NUM_PATCHES).float().expand(x.shape[0], -1))


def hf_encoder_output(hf, x):
    encoder = hf.vit if hasattr(hf, "vit") else hf
    ratio, encoder.config.mask_ratio = encoder.config.mask_ratio, 0.0
    try:
        with torch.no_grad():
            return encoder(**unmasked(x)).last_hidden_state
    finally:
        encoder.config.mask_ratio = ratio


def our_vit(eps=NORM_EPS):
    return build_vit("custom", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                     norm_eps=eps).eval()


def our_mae(norm_pix_loss=False, seed=0):
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                                norm_pix_loss=norm_pix_loss).eval()


def hub_names(hf):
    """The released hub checkpoints' names: transformers 5's ``save_pretrained`` names but
    the decoder blocks under ``decoder.decoder_layers`` (as ``convert_vit_mae_to_pytorch.py``
    wrote them), not ``decoder.decoder_encoder.layer``."""
    return {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v
            for k, v in saved_tensors(hf).items()}


def saved_tensors(hf):
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        return load_file(f"{tmp}/model.safetensors")


def write_bin_folder(hf, folder, shards=1):
    """What transformers 4 wrote with ``safe_serialization=False``: ``pytorch_model.bin``, or
    shards and ``pytorch_model.bin.index.json``; hub names."""
    folder.mkdir()
    hf.config.to_json_file(str(folder / "config.json"))
    state = hub_names(hf)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


# ---------------------------------------------------------------------------------- reading
FOLDERS = {
    "save_pretrained": lambda hf, d: hf.save_pretrained(d) or d,
    "save_pretrained_sharded": lambda hf, d: hf.save_pretrained(d, max_shard_size="60KB") or d,
    "transformers5_module_names": lambda hf, d: hf.save_pretrained(
        d, save_original_format=False) or d,
    "hub_bin": lambda hf, d: write_bin_folder(hf, d),
    "hub_bin_sharded": lambda hf, d: write_bin_folder(hf, d, shards=3),
}


@pytest.mark.parametrize("how", FOLDERS)
def test_a_vitmae_folder_reads_into_our_vit_computing_transformers_encoder(tmp_path, how):
    hf = hf_mae()
    folder = FOLDERS[how](hf, tmp_path / "hf")
    vit = our_vit()
    report = load_pretrained(vit, folder)
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.notes == []
    assert report.layout.startswith("Hugging Face folder (config.json, ")
    assert report.layout.endswith("Hugging Face ViTMAEForPreTraining (vit.*, decoder.*)")
    if "sharded" in how:
        assert "index.json" in report.layout and " shards)" in report.layout
    assert sorted(report.dropped_keys) == sorted(  # the decoder, under our MAE's names
        k for k in our_mae().state_dict() if k.startswith("decoder_") or k == "mask_token")
    x = images()
    with torch.no_grad():
        ours = vit(x)
    assert (ours - hf_encoder_output(hf, x)).abs().max() < 1e-5


def test_a_vitmae_model_folder_without_prefix_and_its_metadata(tmp_path):
    hf = hf_mae(cls=transformers.ViTMAEModel)
    hf.save_pretrained(tmp_path / "enc")
    weights = read_weights(tmp_path / "enc")
    assert weights.report.layout == ("Hugging Face folder (config.json, model.safetensors): "
                                     "Hugging Face ViTMAEModel / ViTModel (embeddings.*, "
                                     "encoder.layer.{i}.*)")
    assert weights.meta["img_size"] == [32, 32] and weights.meta["patch_size"] == [8, 8]
    assert (weights.meta["num_heads"], weights.meta["mask_ratio"]) == (4, 0.75)
    assert "model_config" not in weights.meta  # no decoder to rebuild a whole MAE with
    assert weights.report.dropped_keys == []
    vit = our_vit()
    weights = read_weights(weights, vit)
    assert weights.report.missing_keys == weights.report.unexpected_keys == []
    weights.load_into(vit)
    x = images(2)
    with torch.no_grad():
        assert (vit(x) - hf_encoder_output(hf, x)).abs().max() < 1e-5


def test_a_vit_model_folder_reports_its_pooler_as_unexpected(tmp_path):
    torch.manual_seed(3)
    config = transformers.ViTConfig(**{k: v for k, v in TINY.items() if "decoder" not in k},
                                    layer_norm_eps=NORM_EPS)
    hf = transformers.ViTModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "vit")
    vit = our_vit()
    report = load_pretrained(vit, tmp_path / "vit")
    assert report.missing_keys == []
    assert sorted(report.unexpected_keys) == ["pooler.dense.bias", "pooler.dense.weight"]
    x = images(3)
    with torch.no_grad():
        assert (vit(x) - hf(pixel_values=x).last_hidden_state).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["state_dict.bin", "hub.safetensors"])
def test_a_bare_state_dict_is_read_and_its_mae_rebuilt_from_shapes(tmp_path, name):
    """No config.json: the architecture comes from the shapes (heads: the standard counts), as
    for an official MAE release; ``pretrain.restore`` rebuilds the whole MAE from it."""
    from safetensors.torch import save_file

    from mae_transfer.pretrain.restore import load_mae

    hf = hf_mae(seed=4)
    path = tmp_path / name
    if name.endswith(".bin"):  # a model's state_dict() in memory: transformers 5 module names
        torch.save(hf.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in hub_names(hf).items()}, str(path))
    layout = read_weights(path).report.layout
    assert layout == ("safetensors: " if name.endswith("safetensors") else "") + \
        "Hugging Face ViTMAEForPreTraining (vit.*, decoder.*)"
    mae = load_mae(path)
    x, noise = images(4), torch.rand(2, NUM_PATCHES, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise)
        ours = mae(x, mask_ratio=0.75, noise=noise)
    assert torch.equal(ours.mask, theirs.mask)
    assert (ours.pred - theirs.logits).abs().max() < 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_init_from_a_vitmae_folder_gives_transformers_mae_loss_for_the_same_noise(
        tmp_path, norm_pix_loss, caplog):
    """Pretraining ``--init``: encoder and decoder from the folder; the same masking noise gives
    the same mask, the same (unshuffled) predictions and the same loss."""
    hf = hf_mae(norm_pix_loss=norm_pix_loss, seed=6)
    hf.save_pretrained(tmp_path / "hf")
    model = our_mae(norm_pix_loss=norm_pix_loss)
    with caplog.at_level(logging.INFO, logger="mae_transfer"):
        report = init_from_checkpoint(model, tmp_path / "hf")
    assert report.with_decoder and report.decoder.missing_keys == []
    assert report.encoder.missing_keys == [] and report.encoder.unexpected_keys == []
    assert report.encoder.summary() in caplog.text
    x = images(7, batch=3)
    noise = torch.rand(3, NUM_PATCHES, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise)
        ours = model(x, mask_ratio=hf.config.mask_ratio, noise=noise)
    assert torch.equal(ours.mask, theirs.mask) and ours.mask.sum() == 3 * 12
    assert (ours.pred - theirs.logits).abs().max() < 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


def test_the_hubs_layer_norm_eps_is_reported_and_matters_little(tmp_path):
    """Hub configs say 1e-12, our ViT computes with MAE's 1e-6: the load says so; with the
    config's epsilon the outputs agree to float precision, with ours they differ a little."""
    hf = hf_mae(eps=HUB_EPS, seed=9)
    hf.save_pretrained(tmp_path / "hub")
    vit = our_vit()
    report = load_pretrained(vit, tmp_path / "hub")
    assert report.notes == ["the file's config says layer_norm_eps 1e-12, the model computes "
                            "with 1e-06"]
    assert report.summary().endswith("; note: " + report.notes[0])
    matched = our_vit(eps=HUB_EPS)
    assert load_pretrained(matched, tmp_path / "hub").notes == []
    x = images(10)
    with torch.no_grad():
        reference, ours, same_eps = hf_encoder_output(hf, x), vit(x), matched(x)
    assert (same_eps - reference).abs().max() < 1e-5
    assert 0 < (ours - reference).abs().max() < 1e-4


# ---------------------------------------------------------------------------------- writing
def _transformers_loads(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    return model.eval(), {k: list(v) for k, v in info.items() if v}


def test_an_encoder_converts_to_a_folder_vitmae_model_loads_exactly(tmp_path, capsys):
    mae = our_mae(seed=11)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    src = write_checkpoint(mae.encoder_state_dict(), tmp_path / "enc.safetensors", "ours",
                           {"num_heads": 4, "img_size": [32, 32], "patch_size": [8, 8]})
    assert convert_main([str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "; config.json: ViTMAEModel, 4 heads, layer_norm_eps 1e-06, mask_ratio 0.75, "
        "norm_pix_loss False")
    assert convert_main([str(src), str(tmp_path / "hf2"), "--to", "hf", "--num-heads", "2"]) == 0
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["num_attention_heads"] == 2
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ViTMAEModel"] and config["layer_norm_eps"] == NORM_EPS
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["image_size"], config["patch_size"]) == (64, 2, 4, 32, 8)
    hf, problems = _transformers_loads(transformers.ViTMAEModel, tmp_path / "hf")
    assert problems == {}
    x = images(12)
    with torch.no_grad():
        assert (hf_encoder_output(hf, x) - mae.forward_features(x)).abs().max() < 1e-5
    back = read_weights(tmp_path / "hf").state  # and back: bit for bit
    assert back.keys() == mae.encoder_state_dict().keys()
    assert all(torch.equal(v, mae.encoder_state_dict()[k]) for k, v in back.items())


def test_an_mae_checkpoint_converts_to_a_folder_vitmae_for_pretraining_loads_exactly(tmp_path):
    mae = our_mae(norm_pix_loss=True, seed=13)
    with torch.no_grad():
        for name, p in mae.named_parameters():
            if "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    src = tmp_path / "checkpoint-9.pth"  # as our pretraining writes it (meta: model_config)
    torch.save({"model": mae.state_dict(), "epoch": 9,
                "meta": {"model_config": dict(mae.config)}}, src)
    summary = convert(str(src), str(tmp_path / "hf"), "hf")
    assert summary["dropped"] == []
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["ViTMAEForPreTraining"] and config["norm_pix_loss"]
    hf, problems = _transformers_loads(transformers.ViTMAEForPreTraining, tmp_path / "hf")
    assert problems == {}
    x, noise = images(14), torch.rand(2, NUM_PATCHES, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise)
        ours = mae(x, mask_ratio=0.75, noise=noise)
    assert (ours.pred - theirs.logits).abs().max() < 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5
    # ViTMAEModel takes the same folder's encoder, the decoder being all it leaves
    _, problems = _transformers_loads(transformers.ViTMAEModel, tmp_path / "hf")
    assert list(problems) == ["unexpected_keys"]
    assert all(k.startswith("decoder.") for k in problems["unexpected_keys"])


def test_the_layout_maps_both_ways_in_the_hub_names():
    hf = hf_mae(seed=16)
    hub = hub_names(hf)
    ours = from_hf(hub)
    assert ours.keys() == our_mae().state_dict().keys()
    qkv = ours["blocks.1.attn.qkv.weight"]
    assert torch.equal(qkv[64:128], hub["vit.encoder.layer.1.attention.attention.key.weight"])
    back, skipped = to_hf(ours)
    assert skipped == [] and back.keys() == hub.keys()
    assert all(torch.equal(back[k], hub[k]) for k in hub)


def test_our_eps_is_the_vits_default():
    norms = [m.eps for m in VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1,
                                              num_heads=4).modules()
             if isinstance(m, torch.nn.LayerNorm)]
    assert norms and set(norms) == {NORM_EPS}


def test_what_transformers_cannot_compute_is_refused_in_one_line(tmp_path, capsys):
    vit = build_vit("custom", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                    use_rel_pos=True)
    src = write_checkpoint(vit.state_dict(), tmp_path / "vitdet.safetensors", "ours")
    assert convert_main([str(src), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rel_pos_h: transformers' ViT / ViTMAE has no" in err
    assert not (tmp_path / "hf").exists()
    plain = write_checkpoint(our_vit().state_dict(), tmp_path / "vit.safetensors", "ours")
    assert convert_main([str(plain), str(tmp_path / "vit_hf.safetensors"), "--to", "hf"]) == 2
    assert "names a file; --to hf writes a folder" in capsys.readouterr().err
    assert not (tmp_path / "vit_hf.safetensors").exists()


# ------------------------------------------------------------------------------ bad folders
def _folder(tmp_path, config=None, files=()):
    folder = tmp_path / "folder"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str)
                                            else json.dumps(config))
    for name, content in files:
        if isinstance(content, dict):
            torch.save(content, folder / name)
        else:
            (folder / name).write_text(content)
    return folder


BAD_FOLDERS = {
    "another model type": (
        {"model_type": "bert", "architectures": ["BertModel"]},
        [("pytorch_model.bin", {"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2)})],
        "config.json: model_type 'bert' (BertModel) is not a ViT this reader knows"),
    "no config.json": (None, [("pytorch_model.bin", {"x": torch.zeros(1)})],
                       "is a folder without config.json"),
    "config.json not JSON": ("{oops", [], "config.json: JSONDecodeError"),
    "no weights": ({"model_type": "vit_mae"}, [], "config.json but no weights"),
    "a shard missing": (
        {"model_type": "vit_mae"},
        [("pytorch_model.bin.index.json", json.dumps({"weight_map": {
            "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}})),
         ("pytorch_model-00001-of-00002.bin", {"a": torch.zeros(1)})],
        "lists shard pytorch_model-00002-of-00002.bin, which is not in"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_wrong_folder_stops_in_one_line_naming_it(tmp_path, capsys, case):
    config, files, expected = BAD_FOLDERS[case]
    folder = _folder(tmp_path, config, files)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(our_vit(), folder)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(folder) in str(err.value)
    assert convert_main([str(folder), str(tmp_path / "out.safetensors")]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and expected in out.err and out.out == ""
    assert not (tmp_path / "out.safetensors").exists()


def test_a_config_that_does_not_describe_its_weights_is_refused(tmp_path):
    hf = hf_mae()
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "hidden_size": 768}))
    with pytest.raises(CheckpointError, match="does not describe the weights beside it: "
                                              "hidden_size 768 but the weights have 64"):
        read_weights(tmp_path / "hf")
