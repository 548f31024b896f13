"""The one checkpoint reader: layouts recognised, callers read through it, framework objects."""
import argparse
import collections
import decimal
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.backbones.beit_layout import to_mmseg_beit
from mae_transfer.backbones.checkpoint_reader import CheckpointReport, read_weights
from mae_transfer.pretrain.model import build_mae
from mae_transfer.tools.checkpoints import CheckpointError, write_checkpoint

REPO = Path(__file__).resolve().parents[2]


def encoder(seed=0, **kw):
    torch.manual_seed(seed)
    vit = build_vit("vit_mini_patch16", img_size=64, **kw)
    return {k: torch.randn_like(v) for k, v in vit.state_dict().items()}


def full_mae(seed=0):
    torch.manual_seed(seed)
    mae = build_mae("mae_vit_mini_patch16", img_size=64)
    return {k: torch.randn_like(v) for k, v in mae.state_dict().items()}


def _history_hub():
    """A real MMEngine message hub state: ``HistoryBuffer`` objects holding numpy arrays."""
    from mmengine.logging import HistoryBuffer

    loss = HistoryBuffer()
    for value in (0.9, 0.7, 0.5):
        loss.update(value)
    return {"log_scalars": collections.OrderedDict([("train/loss", loss)]),
            "runtime_info": collections.OrderedDict([("iter", 19), ("eta", np.float64(3.5))]),
            "resumed_keys": collections.OrderedDict([("iter", True)])}


def mmengine_checkpoint(path, enc):
    """What MMEngine's Runner writes for our segmentor (``iter_N.pth``), tiny."""
    state = {**{f"backbone.{k}": v for k, v in enc.items()},
             "backbone.adapter.scales.0.0.weight": torch.zeros(64, 64, 2, 2),
             "decode_head.conv_seg.weight": torch.zeros(3, 16, 1, 1)}
    torch.save({"meta": {"iter": 20, "mmengine_version": "0.10.7",
                         "dataset_meta": {"classes": ("disc", "square", "triangle")}},
                "state_dict": collections.OrderedDict(state), "message_hub": _history_hub(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                "param_schedulers": [{"last_step": 20, "base_values": [1e-4]}]}, path)
    return path


def _layout_files(tmp_path, enc):
    """(file, the layout name the reader must give it): one per row of docs/checkpoints.md."""
    mae = full_mae()
    decoder = {k: v for k, v in mae.items() if k.startswith(("decoder_", "mask_token"))}
    timm_like = {**enc, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    beit_ours = encoder(rel_pos_type="beit", use_rel_pos=True, layer_scale_init=0.1)
    beit = to_mmseg_beit(beit_ours)
    unilm = {k: v for k, v in beit_ours.items() if not k.endswith("qkv.bias")}
    for k in [k for k in beit_ours if k.endswith("qkv.bias")]:  # unilm: no k bias
        unilm[k.replace("qkv.bias", "q_bias")] = beit_ours[k][:64]
        unilm[k.replace("qkv.bias", "v_bias")] = beit_ours[k][128:]
    rows = [
        (write_checkpoint(enc, tmp_path / "a.safetensors"),
         "ours (safetensors): ViT encoder (blocks.{i}.*)"),
        (write_checkpoint(enc, tmp_path / "b.pth"),
         "ours (.pth + meta): ViT encoder (blocks.{i}.*)"),
        (tmp_path / "c.pth", "MAE with decoder (decoder_*, mask_token)"),
        (tmp_path / "d.pth", "ViT encoder (blocks.{i}.*)"),
        (tmp_path / "e.pth", "timm ViT (head.*)"),
        (write_checkpoint(enc, tmp_path / "f.pth", "detectron2"),
         "ours (.pth + meta): Detectron2 ViT (backbone.net.*)"),
        (tmp_path / "g.pth", "Detectron2 detector"),
        (write_checkpoint(enc, tmp_path / "h.pth", "mmseg"), "MMSeg MAEViT (backbone.*)"),
        (tmp_path / "i.pth", "MMSeg MAE/BEiT (layers.{i}.*)"),
        (tmp_path / "j.pth", "unilm BEiT (q_bias/v_bias)"),
        (mmengine_checkpoint(tmp_path / "iter_20.pth", enc),
         "MMEngine checkpoint: MMSeg MAEViT (backbone.*)"),
    ]
    torch.save({"model": {**enc, **decoder}, "epoch": 3}, tmp_path / "c.pth")
    torch.save({"model": enc}, tmp_path / "d.pth")
    torch.save(timm_like, tmp_path / "e.pth")
    torch.save({"model": {**{f"backbone.net.{k}": v for k, v in enc.items()},
                          "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 8)},
                "iteration": 9}, tmp_path / "g.pth")
    torch.save({"state_dict": beit}, tmp_path / "i.pth")
    torch.save({"model": unilm}, tmp_path / "j.pth")
    return rows


def test_every_layout_is_recognised_and_read_into_our_names(tmp_path):
    enc = encoder()
    for path, layout in _layout_files(tmp_path, enc):
        weights = read_weights(path)
        assert weights.report.layout == layout, path.name
        if "BEiT" in layout:  # BEiT tables and layer scale: another ViT, same names
            assert {k for k in weights.state if not k.endswith(("bias_table", "gamma_1",
                                                                "gamma_2"))} == set(enc)
            bias = weights.state["blocks.0.attn.qkv.bias"]
            if "unilm" in layout:  # q / v biases folded, k's bias zero (the same function)
                assert torch.equal(bias[64:128], torch.zeros(64)) and bias.abs().sum() > 0
            continue
        # timm's classifier head stays in (the fit to a model reports it as unexpected)
        assert {k for k in weights.state if not k.startswith("head.")} == set(enc), path.name
        assert all(torch.equal(weights.state[k], enc[k]) for k in enc), path.name


def test_a_file_without_a_vit_is_named_as_such_and_not_converted(tmp_path, capsys):
    from mae_transfer.tools.convert_checkpoint import main

    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(8, 3, 7, 7),
                               "backbone.layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1),
                               "decode_head.conv_seg.weight": torch.zeros(3, 8, 1, 1)}}, path)
    layout = read_weights(path).report.layout
    assert layout.startswith("not a ViT checkpoint: ") and "(first keys:" in layout
    assert main([str(path), str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path} holds no ViT encoder ({layout}); nothing written"
    assert not (tmp_path / "out.safetensors").exists()


def test_mmengine_segmentation_checkpoint_reads_without_running_framework_code(tmp_path):
    enc = encoder(seed=1)
    path = mmengine_checkpoint(tmp_path / "iter_20.pth", enc)
    # what makes it readable is the allow-list: plain weights_only refuses the HistoryBuffer
    with pytest.raises(Exception, match="HistoryBuffer"):
        torch.load(path, weights_only=True)
    weights = read_weights(path)
    assert weights.meta["iter"] == 20 and weights.meta["dataset_meta"]["classes"] == (
        "disc", "square", "triangle")
    assert sorted(weights.report.dropped_keys) == ["adapter.scales.0.0.weight",
                                                   "decode_head.conv_seg.weight"]
    vit = build_vit("vit_mini_patch16", img_size=64)
    report = load_pretrained(vit, path)
    assert report.missing_keys == report.unexpected_keys == []
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in enc.items())


class _FetchesAMethod:
    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))


def _refusal(path) -> str:
    with pytest.raises(CheckpointError) as err:
        read_weights(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"refusing to load {path}")
    return msg


def test_other_pickled_objects_are_refused_naming_file_and_object(tmp_path):
    from mmengine.logging import HistoryBuffer

    enc = encoder()
    cases = [(decimal.Decimal("1.5"), "decimal.Decimal"),
             (_FetchesAMethod(HistoryBuffer, "update"),
              "mmengine.logging.history_buffer.HistoryBuffer.update"),
             (_FetchesAMethod(argparse.Namespace, "__init__"), "Namespace.__init__"),
             # numpy arrays are allowed, but of numbers only
             (np.array(["a", 1], dtype=object), "numpy.dtypes.ObjectDType")]
    for i, (obj, named) in enumerate(cases):
        path = tmp_path / f"bad{i}.pth"
        torch.save({"model": enc, "extra": obj}, path)
        assert f"({named})" in _refusal(path)


def mae_file(tmp_path):
    path = tmp_path / "checkpoint-9.pth"
    torch.save({"model": full_mae(seed=2), "epoch": 9}, path)
    return path


def _load_pretrained(path, _):
    return load_pretrained(build_vit("vit_mini_patch16", img_size=64), path)


def _pretrain_init(path, _):
    from mae_transfer.pretrain.init import init_from_checkpoint

    report = init_from_checkpoint(build_mae("mae_vit_mini_patch16", img_size=64), path)
    assert report.with_decoder and not report.decoder.missing_keys
    return report.encoder


def _restore(path, _):
    from mae_transfer.pretrain.restore import load_mae

    model = load_mae(path)
    assert torch.equal(model.decoder_embed.weight, full_mae(seed=2)["decoder_embed.weight"])


def _convert(path, _):
    from mae_transfer.tools.convert_checkpoint import convert

    summary = convert(str(path), str(path.with_name("out.safetensors")), "ours")
    assert summary["layout"] == "MAE with decoder (decoder_*, mask_token)"


@pytest.mark.parametrize("caller", [_load_pretrained, _pretrain_init, _restore, _convert],
                         ids=lambda f: f.__name__.strip("_"))
def test_every_caller_reads_through_the_one_reader_once(tmp_path, reader_reads, caplog, caller):
    """Detection's and segmentation's callers: tests/detection/test_checkpoint_loading.py and
    tests/segmentation/test_framework_checkpoints.py."""
    path = mae_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="mae_transfer"):
        report = caller(path, None)
    assert reader_reads["reader"] == reader_reads["file"] == [path]
    if report is not None:  # the callers that load a ViT log the reader's one summary line
        assert isinstance(report, CheckpointReport)
        assert report.layout == "MAE with decoder (decoder_*, mask_token)"
        assert report.missing_pretrained == [] and report.tensors > 0
        assert report.summary() in caplog.text


def test_summary_names_every_kind_of_key(tmp_path):
    enc = encoder()
    path = write_checkpoint({**enc, "head.weight": torch.zeros(3, 64)}, tmp_path / "x.pth")
    deeper = build_vit("custom", img_size=96, patch_size=16, embed_dim=64, depth=5, num_heads=4)
    report = read_weights(path, deeper, target="deeper").report
    missing = [k for k in deeper.state_dict() if k.startswith("blocks.4.")]
    assert report.missing_keys == missing and report.unexpected_keys == ["head.weight"]
    assert report.resized_keys == ["pos_embed"] and report.tensors == len(enc)
    assert report.summary() == (
        f"{path} (ours (.pth + meta): timm ViT (head.*)) -> deeper: {len(enc)} tensors loaded; "
        f"{len(missing)} missing keys {missing}; 0 new in fine-tuning (left at their init); "
        f"1 unexpected keys ['head.weight']; dropped 0 non-encoder keys; resized ['pos_embed']")


def test_no_module_private_dicts_are_edited():
    """Reports are shaped by ``exclude=``, never by hiding submodules in ``nn.Module``'s dicts."""
    pattern = re.compile(r"\._(modules|parameters|buffers)\b")
    offenders = [str(p.relative_to(REPO)) for folder in ("backbones", "detection", "pretrain",
                                                         "segmentation", "tools", "experiment")
                 for p in (REPO / folder).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
