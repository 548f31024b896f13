"""tools/probe_instances.py: mask pooling, the probe's numbers, and the CLI on the shapes set."""
import json
import math

import pytest
import torch

from mae_transfer.experiment.probe import main, pool_over_mask, probe
from mae_transfer.tools.synthetic_data import make_shapes_dataset


def test_pool_over_mask_weights_tokens_by_their_share_of_the_instance():
    f = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2)  # (D=2, h=2, w=2)
    mask = torch.zeros(4, 4)
    mask[:2, :2] = 1.0        # all of token (0, 0)
    mask[:1, 2:] = 1.0        # half of token (0, 1)
    pooled = pool_over_mask([f, 10 * f], mask)
    w = torch.tensor([[1.0, 0.5], [0.0, 0.0]])
    expected = (f * w).sum((1, 2)) / w.sum()
    assert torch.allclose(pooled, torch.cat([expected, 10 * expected]))


def test_probe_separates_separable_classes_and_reports_chance_and_error():
    torch.manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    yt, yv = torch.arange(3).repeat(20), torch.tensor([0] * 10 + [1] * 5 + [2] * 5)
    xt = centres[yt] + 0.3 * torch.randn(60, 3)
    xv = centres[yv] + 0.3 * torch.randn(20, 3)
    r = probe((xt, yt), (xv, yv), 3)
    assert r["logistic_acc"] == pytest.approx(100.0) and r["centroid_acc"] == pytest.approx(100.0)
    assert r["logistic_se"] == 0.0
    assert r["chance_acc"] == pytest.approx(50.0)  # the majority class of val
    assert (r["train_instances"], r["val_instances"]) == (60, 20)
    # labels unrelated to the features: accuracy near chance, with a matching standard error
    noise = probe((torch.randn(300, 3), torch.randint(0, 3, (300,))),
                  (torch.randn(300, 3), torch.randint(0, 3, (300,))), 3)
    assert 20.0 < noise["logistic_acc"] < 47.0
    p = noise["logistic_acc"] / 100
    assert noise["logistic_se"] == pytest.approx(100 * math.sqrt(p * (1 - p) / 300))


def test_cli_on_the_shapes_set(tmp_path):
    """Colour-coded shapes: even a randomly initialised ViT's pooled features tell the classes
    apart; every annotated instance is counted; the JSON holds what the table shows."""
    paths = make_shapes_dataset(tmp_path / "shapes", num_train=12, num_val=6, size=64,
                                layouts=("coco",))
    coco = tmp_path / "shapes" / "coco"
    out = tmp_path / "probe.json"
    assert main(["--coco", str(coco), "--arch", "vit_mini_patch16", "--size", "64",
                 "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]["random"]
    anns = {s: len(json.loads((coco / "annotations" / f"instances_{s}.json").read_text())
                   ["annotations"]) for s in ("train", "val")}
    assert (results["train_instances"], results["val_instances"]) == (anns["train"], anns["val"])
    assert results["logistic_acc"] >= 80.0 and results["centroid_acc"] >= 80.0
    assert paths  # the generator reports what it wrote


def test_cli_refuses_a_folder_without_the_splits(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--coco", str(tmp_path)])
    assert exc.value.code == 2
    assert "instances_train.json not found" in capsys.readouterr().err
