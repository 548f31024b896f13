"""How much the LayerNorm epsilon of Hugging Face's ViTMAE configs (1e-12) changes a ViT-B's output
against the official MAE's (1e-6, ours), on real photos: the measurement behind the epsilon
decision in docs/checkpoints.md.

    python bench/layer_norm_eps.py [--images 8] [--arch vit_base_patch16] [--seed 0]

One ViT at MAE's initialisation (no trained ViT-B can be downloaded here), computed twice with the
same weights: LayerNorm epsilon 1e-6 and 1e-12. Reported: the largest and the mean absolute
difference of the final tokens, relative to their mean magnitude, the lowest cosine similarity of
a token, and the smallest per-token variance seen at any LayerNorm input (the epsilon's effect on
a token is about (1e-6 - 1e-12) / (2 x its variance), relative). With transformers installed, the
same weights written as a Hugging Face folder (``--to hf``, config epsilon set to 1e-12, as on the
hub) and run by ``transformers.ViTMAEModel`` are compared with ours as well. Photos: the data
root's ``imagenet-sample`` (``$MAE_TRANSFER_DATA``, else ``../shared/data``), else generated.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mae_transfer.backbones.vit import build_vit  # noqa: E402
from mae_transfer.tools.image_inputs import data_root, list_images  # noqa: E402

HUB_EPS, OUR_EPS = 1e-12, 1e-6
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photos(count: int, size: int) -> tuple[torch.Tensor, str]:
    """``count`` photos as MAE's evaluation transform makes them (resize, centre crop,
    normalise)."""
    from PIL import Image
    from torchvision import transforms

    folder = data_root() / "imagenet-sample"
    files = list_images([str(folder)])[:count] if folder.is_dir() else []
    source = f"{len(files)} photos of {folder}"
    if not files:
        from mae_transfer.tools.synthetic_data import write_synthetic_images

        folder = write_synthetic_images(Path(tempfile.mkdtemp()) / "images", count=count)
        files, source = list_images([str(folder)]), f"{count} generated images"
    tf = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files]), source


def smallest_layer_norm_variance(model, x) -> float:
    """The smallest per-token variance of any LayerNorm's input during ``model(x)``."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(
        args[0].float().var(dim=-1, unbiased=False).min().item()))
        for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return min(seen)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).abs()
    scale = b.abs().mean().item()
    cos = torch.nn.functional.cosine_similarity(a.flatten(0, 1), b.flatten(0, 1), dim=-1)
    return {"max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "max_abs_diff_over_mean_abs_output": diff.max().item() / scale,
            "min_token_cosine": cos.min().item()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--arch", default="vit_base_patch16")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    ours = build_vit(args.arch, img_size=args.img_size, norm_eps=OUR_EPS).eval()
    hub = build_vit(args.arch, img_size=args.img_size, norm_eps=HUB_EPS).eval()
    hub.load_state_dict(ours.state_dict())
    x, source = photos(args.images, args.img_size)
    with torch.no_grad():
        out_ours, out_hub = ours(x), hub(x)
    result = {"arch": args.arch, "inputs": source, "weights": "MAE's initialisation",
              "smallest_layer_norm_input_variance": smallest_layer_norm_variance(ours, x),
              "ours_1e-6_vs_ours_1e-12": compare(out_ours, out_hub)}
    try:
        import transformers
    except ImportError:
        result["transformers_1e-12_vs_ours_1e-6"] = "transformers not installed"
    else:
        from mae_transfer.tools.checkpoints import write_checkpoint

        transformers.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            meta = {"num_heads": ours.arch["num_heads"], "norm_eps": HUB_EPS}
            write_checkpoint(ours.state_dict(), Path(tmp) / "hf", "hf", meta)
            hf = transformers.ViTMAEModel.from_pretrained(Path(tmp) / "hf", mask_ratio=0.0).eval()
        n = out_ours.shape[1] - 1
        with torch.no_grad():
            out_hf = hf(pixel_values=x, noise=torch.arange(n).float().expand(len(x), -1))
        result["transformers_1e-12_vs_ours_1e-6"] = compare(out_ours, out_hf.last_hidden_state)
        result["transformers_1e-12_vs_ours_1e-12"] = compare(out_hub, out_hf.last_hidden_state)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
