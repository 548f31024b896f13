"""Our own MMEngine checkpoints (``iter_N.pth``, written by the real Runner) as pretrained weights.

They hold MMEngine objects (``HistoryBuffer`` in ``message_hub``, numpy arrays) next to the
tensors; the one reader reads them with ``weights_only=True`` (allow-listed framework objects),
so ``--pretrained``, ``init_cfg``, the converter and Detectron2's ``train.init_checkpoint``
take them.
"""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.backbones.checkpoint_reader import read_weights

REPO = Path(__file__).resolve().parents[2]


def _mae_vit():
    from mae_transfer.segmentation.backbone import MAEViT

    return MAEViT(arch="vit_mini_patch16", img_size=32, norm_cfg=dict(type="BN"))


@pytest.fixture(scope="module")
def iter_checkpoint(tmp_path_factory):
    """Two iterations of MMEngine's Runner on a tiny segmentor-shaped model: a real iter_2.pth."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class TinySegmentor(BaseModel):
        def __init__(self):
            super().__init__()
            self.backbone = _mae_vit()
            self.decode_head = nn.Conv2d(64, 3, 1)

        def forward(self, inputs, data_samples=None, mode="tensor"):
            logits = self.decode_head(self.backbone(inputs)[2])
            return {"loss": logits.pow(2).mean()} if mode == "loss" else logits

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(inputs=torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)))

    work = tmp_path_factory.mktemp("runner")
    torch.manual_seed(0)
    runner = Runner(
        model=TinySegmentor(), work_dir=str(work),
        train_dataloader=dict(dataset=Images(), batch_size=2, num_workers=0,
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
        param_scheduler=[dict(type="PolyLR", by_epoch=False, begin=0, end=2)],
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False),
                           logger=dict(type="LoggerHook", interval=1)))
    runner.train()
    trained = {k[len("backbone."):]: v.clone() for k, v in runner.model.state_dict().items()
               if k.startswith("backbone.") and not k.startswith("backbone.adapter.")}
    return work / "iter_2.pth", trained


def test_the_runner_checkpoint_holds_framework_objects(iter_checkpoint):
    path, _ = iter_checkpoint
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert "mmengine.logging.history_buffer.HistoryBuffer" in unsafe
    weights = read_weights(path)
    assert weights.report.layout == "MMEngine checkpoint: MMSeg MAEViT (backbone.*)"
    assert weights.meta["iter"] == 2


def _assert_vit_equal(model_state, trained):
    for key, value in trained.items():
        assert torch.equal(model_state[key], value), key


def test_pretrained_and_init_cfg_take_our_iter_checkpoint(iter_checkpoint):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    path, trained = iter_checkpoint
    vit = _mae_vit()
    report = vit.load_pretrained(str(path))  # what --pretrained / model.pretrained runs
    assert report.missing_keys == report.unexpected_keys == []
    # the segmentor's own adapter and head are not the ViT's pretrained weights
    adapter = [f"adapter.{k}" for k in vit.adapter.state_dict()]
    assert sorted(report.dropped_keys) == sorted(adapter + ["decode_head.bias",
                                                            "decode_head.weight"])
    _assert_vit_equal(vit.state_dict(), trained)
    built = MODELS.build(dict(type="MAEViT", arch="vit_mini_patch16", img_size=32,
                              norm_cfg=dict(type="BN"),
                              init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    built.init_weights()
    _assert_vit_equal(built.state_dict(), trained)


def test_converter_takes_our_iter_checkpoint(iter_checkpoint, tmp_path):
    from mae_transfer.tools.convert_checkpoint import main

    path, trained = iter_checkpoint
    assert main([str(path), str(tmp_path / "vit.safetensors"), "--to", "ours"]) == 0
    vit = build_vit("vit_mini_patch16", img_size=32, use_rel_pos=True, final_norm=False)
    report = load_pretrained(vit, tmp_path / "vit.safetensors", strict=True)
    assert report.layout == "ours (safetensors): ViT encoder (blocks.{i}.*)"
    _assert_vit_equal(vit.state_dict(), trained)


def test_detectron2_init_checkpoint_takes_our_iter_checkpoint(iter_checkpoint):
    from mae_transfer import detection

    detection.setup()  # the framework fixes, before Detectron2 is imported
    from detectron2.config import LazyConfig, instantiate

    from mae_transfer.detection.checkpointing import load_init_checkpoint

    path, trained = iter_checkpoint
    cfg = LazyConfig.load(str(REPO / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"))
    model = instantiate(cfg.model)
    report = load_init_checkpoint(model, str(path))
    assert report.part == "encoder" and report.missing_pretrained == []
    state = model.backbone.net.state_dict()
    for key in ("blocks.3.mlp.fc2.weight", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias"):
        assert torch.equal(state[key], trained[key])


def test_pretrained_reads_through_the_one_reader_and_logs_its_summary(tmp_path, reader_reads,
                                                                      monkeypatch):
    import mae_transfer.segmentation.backbone as seg_backbone
    from mae_transfer.pretrain.model import build_mae

    torch.manual_seed(2)
    mae = build_mae("mae_vit_mini_patch16", img_size=64).state_dict()
    path = tmp_path / "checkpoint-9.pth"
    torch.save({"model": mae, "epoch": 9}, path)
    printed = []
    monkeypatch.setattr(seg_backbone, "print_log", lambda msg, **kw: printed.append(msg))
    vit = _mae_vit()
    report = vit.load_pretrained(str(path))
    assert reader_reads["reader"] == reader_reads["file"] == [path]
    assert report.layout == "MAE with decoder (decoder_*, mask_token)"
    assert f"MAEViT: loaded pretrained weights: {report.summary()}" in printed
    assert report.missing_pretrained == [] and torch.equal(vit.blocks[1].mlp.fc1.weight,
                                                           mae["blocks.1.mlp.fc1.weight"])
