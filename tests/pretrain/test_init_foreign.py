"""``--init`` with a file that holds no MAE encoder stops, naming what the file looks like."""
import pytest
import torch

from mae_transfer.pretrain.init import init_from_checkpoint
from mae_transfer.pretrain.model import build_mae
from mae_transfer.tools.checkpoints import CheckpointError


@pytest.mark.parametrize("state, layout", [
    ({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1),
      "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)},
     "a torchvision/timm classifier"),
    ({"vit.embeddings.patch_embeddings.projection.weight": torch.zeros(64, 3, 16, 16),
      "vit.encoder.layer.0.attention.attention.query.weight": torch.zeros(64, 64),
      "cls_token": torch.zeros(1, 1, 64)}, "a Hugging Face transformers ViT"),
])
def test_init_from_a_foreign_file_stops_naming_its_layout(tmp_path, state, layout):
    """Before: a shared ``cls_token`` was enough; pretraining went on from random init."""
    path = tmp_path / "foreign.pth"
    torch.save(state, path)
    model = build_mae("mae_vit_mini_patch16", img_size=32)
    with pytest.raises(CheckpointError) as err:
        init_from_checkpoint(model, path)
    msg = str(err.value)
    assert "\n" not in msg and f"looks like {layout}" in msg
    assert "python tools/convert_checkpoint.py SRC DST --to ours" in msg
