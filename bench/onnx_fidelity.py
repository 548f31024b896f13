"""How closely onnxruntime reproduces PyTorch for a full-size config's export (docs/deploy.md).

    python bench/onnx_fidelity.py det detection/configs/mask_rcnn_vitdet_b_coco.py OUT_DIR \
        model.roi_heads.box_predictor.test_score_thresh=0.01
    python bench/onnx_fidelity.py seg \
        segmentation/configs/upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py OUT_DIR

Writes a seeded random-init checkpoint of the config's model into OUT_DIR (in the format the
training tool writes: ``model_final.pth`` / ``iter_0.pth``), with the relative-position tables
(zero at init, which would hide a wrong index) and layer-scale vectors drawn at random, then runs
``tools/export_onnx.py`` on it and prints its report: the largest differences at the real input
size, without a trained checkpoint. Random weights give small random-looking outputs (a random
detector scores every class about equally: lower ``test_score_thresh`` to get detections).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

#: Parameters that start as constants and are drawn at random here (name fragments).
CONSTANT_AT_INIT = ("rel_pos", "relative_position_bias_table", "gamma_")


def randomise_constants(model: torch.nn.Module, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(part in name for part in CONSTANT_AT_INIT):
                p.add_(torch.randn(p.shape, generator=g) * std)


def det_checkpoint(config: str, out_dir: Path) -> Path:
    from mae_transfer import detection

    detection.setup()
    from detectron2.config import LazyConfig, instantiate

    from mae_transfer.detection.checkpointing import AtomicCheckpointer

    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(config).model)
    randomise_constants(model)
    AtomicCheckpointer(model, str(out_dir)).save("model_final", iteration=0)
    return out_dir / "model_final.pth"


def seg_checkpoint(config: str, out_dir: Path) -> Path:
    from mae_transfer import segmentation

    segmentation.setup()
    import mae_transfer.segmentation.registration  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = Config.fromfile(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    randomise_constants(model)
    path = out_dir / "iter_0.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] not in ("det", "seg"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    kind, config, out_dir, extra = argv[0], argv[1], Path(argv[2]), argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = (det_checkpoint if kind == "det" else seg_checkpoint)(config, out_dir)
    from mae_transfer.tools.export_onnx import main as export

    return export([kind, config, str(checkpoint), str(out_dir / f"{kind}.onnx"), *extra])


if __name__ == "__main__":
    sys.exit(main())
