"""Classification pieces against explicit computations: data-root checks, encoder loading, the
classifier against timm's ViT, the probe head, LARS, MAE's layer-decay groups (fast)."""
import functools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.backbones.checkpoint_files import CheckpointError
from mae_transfer.classification.data import (ClassificationDataError, check_image_folder,
                                              eval_size, image_folder, linprobe_transform)
from mae_transfer.classification.encoder import (build_encoder, load_encoder_weights,
                                                 resolve_model)
from mae_transfer.classification.head import build_classifier, freeze_all_but_head
from mae_transfer.classification.lars import LARS
from mae_transfer.tools.checkpoints import write_checkpoint
from mae_transfer.tools.lr_decay import param_groups


def make_folder(root, classes=("a", "b", "c"), splits=("train", "val"), per_class=2, size=20):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------ data
def test_image_folder_checks_count_classes_and_images(tmp_path):
    info = check_image_folder(make_folder(tmp_path), nb_classes=3)
    assert (info.classes, info.num_train, info.num_val) == (["a", "b", "c"], 6, 6)
    ds = image_folder(tmp_path, "train", linprobe_transform(16))
    assert ds.classes == info.classes and ds[0][0].shape == (3, 16, 16)
    assert eval_size(224) == 256 and eval_size(448) == 448  # MAE: crop_pct 0.875 up to 224


@pytest.mark.parametrize("fault, expected", [
    ("no_val", "has no val/ folder"),
    ("nb_classes", "--nb_classes 5 but"),
    ("class_mismatch", "hold different class folders"),
    ("empty_class", "holds no images"),
])
def test_bad_roots_are_one_line_errors(tmp_path, fault, expected):
    root = make_folder(tmp_path, splits=("train",) if fault == "no_val" else ("train", "val"))
    nb = 5 if fault == "nb_classes" else None
    if fault == "class_mismatch":
        (root / "val" / "c").rename(root / "val" / "d")
    if fault == "empty_class":
        (root / "train" / "e").mkdir()
    with pytest.raises(ClassificationDataError) as err:
        check_image_folder(root, nb)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(root) in str(err.value)


# --------------------------------------------------------------------------------- encoder
def test_model_names_are_official_maes():
    assert resolve_model("vit_base_patch16") == "vit_base_patch16"
    assert resolve_model("mae_vit_huge_patch14") == "vit_huge_patch14"
    with pytest.raises(ValueError, match="unknown --model"):
        resolve_model("vit_gigantic_patch16")


def test_finetune_weights_load_resized_and_other_sizes_refused(tmp_path):
    src = build_encoder("vit_mini_patch8", 32)
    path = write_checkpoint(src.state_dict(), tmp_path / "enc.safetensors", "ours",
                            {"img_size": [32, 32], "patch_size": [8, 8]})
    clf = build_classifier("vit_mini_patch8", 3, input_size=48, global_pool=True)
    report = load_encoder_weights(clf, path, "vit_mini_patch8")
    assert report.resized_keys == ["pos_embed"] and clf.pos_embed.shape == (1, 37, 64)
    assert sorted(report.missing_keys) == ["fc_norm.bias", "fc_norm.weight"]  # as MAE asserts
    assert sorted(report.unexpected_keys) == ["norm.bias", "norm.weight"]
    assert torch.equal(clf.blocks[3].mlp.fc2.weight, src.blocks[3].mlp.fc2.weight)
    for other in ("vit_mini_patch16", "vit_tiny_patch16"):
        with pytest.raises(CheckpointError, match=f"--model {other} has") as err:
            load_encoder_weights(build_classifier(other, 3, 32), path, other)
        assert "\n" not in str(err.value)
    deeper = build_encoder("vit_mini_patch8", 32, depth=8)  # same width, 8 blocks
    deep_path = write_checkpoint(deeper.state_dict(), tmp_path / "deep.safetensors")
    with pytest.raises(CheckpointError, match="depth 8, --model vit_mini_patch8 has .*depth 4"):
        load_encoder_weights(build_classifier("vit_mini_patch8", 3, 32), deep_path,
                             "vit_mini_patch8")


# ------------------------------------------------------------------------------ classifier
@pytest.mark.parametrize("global_pool", [True, False])
def test_classifier_computes_timms_vit(global_pool):
    """MAE's models_vit is timm's ViT with (global_pool: mean of patch tokens + fc_norm, no final
    norm) or (cls token after norm): same logits as timm's own options given the same weights."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    torch.manual_seed(0)
    ours = build_classifier("vit_mini_patch8", 5, input_size=32, global_pool=global_pool).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = TimmViT(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=5,
                  global_pool="avg" if global_pool else "token", fc_norm=global_pool,
                  norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_head_init_follows_the_recipes():
    ft = build_classifier("vit_mini_patch16", 1000, 32)
    lp = build_classifier("vit_mini_patch16", 1000, 32, global_pool=False, probe=True)
    assert abs(ft.head.weight.std().item() / 2e-5 - 1) < 0.05 and not ft.head.bias.any()
    assert abs(lp.head[1].weight.std().item() / 0.01 - 1) < 0.05
    bn = lp.head[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert ft.fc_norm is not None and isinstance(ft.norm, torch.nn.Identity)
    assert lp.fc_norm is None and isinstance(lp.norm, torch.nn.LayerNorm)


def test_probe_head_and_freezing_against_explicit_computation():
    torch.manual_seed(1)
    model = build_classifier("vit_mini_patch8", 3, 32, global_pool=False, probe=True)
    assert freeze_all_but_head(model) == ["head.1.weight", "head.1.bias"]
    feats = torch.randn(6, 64) * 3 + 1
    out = model.head.train()(feats)
    mean, var = feats.mean(0), feats.var(0, unbiased=False)
    w, b = model.head[1].weight, model.head[1].bias
    torch.testing.assert_close(out, (feats - mean) / torch.sqrt(var + 1e-6) @ w.T + b)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not n.startswith("head.")}
    opt = LARS(model.head.parameters(), lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)),
                                      torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


# ------------------------------------------------------------------------------------ LARS
def test_lars_steps_equal_the_explicit_rule():
    """Two steps of MAE's LARS by hand: trust ratio eta ||p|| / ||g + wd p|| on the matrix only,
    plain momentum SGD (no wd, no ratio) on the bias, momentum 0.9."""
    torch.manual_seed(2)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    grads = [(torch.randn(4, 3), torch.randn(4)) for _ in range(2)]
    lr, wd, eta = 0.5, 0.1, 0.001
    opt = LARS([w, b], lr=lr, weight_decay=wd, trust_coefficient=eta)
    ew, eb = w.detach().clone(), b.detach().clone()
    mu_w, mu_b = torch.zeros_like(ew), torch.zeros_like(eb)
    for gw, gb in grads:
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw + wd * ew
        u = u * (eta * ew.norm() / u.norm())
        mu_w = 0.9 * mu_w + u
        mu_b = 0.9 * mu_b + gb
        ew, eb = ew - lr * mu_w, eb - lr * mu_b
    torch.testing.assert_close(w.detach(), ew)
    torch.testing.assert_close(b.detach(), eb)
    zero = torch.zeros(2, 2, requires_grad=True)  # ||p|| = 0: ratio 1 (plain SGD step)
    zero.grad = torch.ones(2, 2)
    LARS([zero], lr=1.0).step()
    assert torch.equal(zero.detach(), -torch.ones(2, 2))


# ---------------------------------------------------------------------------- layer decay
def test_finetune_groups_follow_maes_param_groups_lrd_on_vit_b():
    """Official MAE's util/lr_decay.py rule, written out: layer id 0 for cls_token, pos_embed,
    patch_embed.*; i + 1 for blocks.i.*; L + 1 (= num_layers there) for the rest; lr scale
    decay ** (L + 1 - id); no weight decay for ndim == 1 and model.no_weight_decay()
    (timm: pos_embed, cls_token, dist_token)."""
    model = build_classifier("vit_base_patch16", 1000, 224, global_pool=True)
    decay, wd, depth = 0.65, 0.05, 12
    groups = param_groups(model, wd, decay, wd_policy="mae_finetune")
    got = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["param_names"]}

    def mae_layer_id(name):
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks"):
            return int(name.split(".")[1]) + 1
        return depth + 1

    expected = {}
    for name, p in model.named_parameters():
        no_wd = p.ndim == 1 or name in {"pos_embed", "cls_token", "dist_token"}
        expected[name] = (decay ** (depth + 1 - mae_layer_id(name)), 0.0 if no_wd else wd)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name][1] == expected[name][1], name
        assert math.isclose(got[name][0], expected[name][0], rel_tol=1e-12), name
    assert got["head.weight"] == (1.0, wd) and got["fc_norm.weight"] == (1.0, 0.0)
    assert got["pos_embed"] == (decay ** 13, 0.0)
    assert len(groups) == 2 * (depth + 2)  # MAE: layer_{0..13}_{decay,no_decay}
