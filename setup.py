"""mae-transfer: MAE pretraining -> ViTDet Mask R-CNN (Detectron2) and UperNet (MMSegmentation).

Install with ``bash tools/install.sh`` (see README): Detectron2 and the mmcv flavour need steps that
pip metadata cannot express, so they are handled by that script rather than ``install_requires``.
"""
from setuptools import find_packages, setup

#: the top-level folders that install as ``mae_transfer.<name>``: one import name, like timm,
#: detectron2 and mmseg, so that no generic ``tools`` or ``detection`` lands on a user's path.
SUBPACKAGES = ("backbones", "tools", "pretrain", "detection", "segmentation", "classification",
               "experiment")


def mapped_packages():
    """``mae_transfer`` and every package below the folders above, each mapped to its folder."""
    packages, package_dir = ["mae_transfer"], {"mae_transfer": "mae_transfer"}
    for top in SUBPACKAGES:
        for name in [top] + [f"{top}.{sub}" for sub in find_packages(top)]:
            packages.append(f"mae_transfer.{name}")
            package_dir[f"mae_transfer.{name}"] = name.replace(".", "/")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = mapped_packages()

setup(
    name="mae-transfer",
    version="0.1.0",
    description="One ViT from MAE pretraining to Detectron2 detection and MMSeg segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"mae_transfer.detection": ["configs/*.py", "configs/common/*.py"],
                  "mae_transfer.segmentation": ["configs/*.py"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0",
        "safetensors",
        "tensorboard",
        "pycocotools",
        "fvcore",
        "shapely",                 # fvcore crops polygon masks with it (detection's LSJ crop)
        "mmengine==0.10.7",
        "mmsegmentation==1.2.2",   # its metadata does not list mmcv/mmengine: we do
        "ftfy",                    # mmseg imports these at import time
        "regex",
        "setuptools>=77.0.3,<82",  # mmengine resolves `mmseg::` configs through pkg_resources
        "Pillow",
        "numpy",
        "tqdm",
        "lvis",                    # LVIS evaluation (AP, APr, APc, APf)
        "faster-coco-eval",        # COCO evaluation, checked equal to pycocotools before use
    ],
    extras_require={
        # mmcv without compiled ops is enough for UperNet; a compiled mmcv 2.1.0 works too.
        # mmseg 1.2.2 refuses mmcv >= 2.2 at import time.
        "lite": ["mmcv-lite==2.1.0"],
        # Hugging Face ViTMAE checkpoints in and out, ONNX export and its onnxruntime check
        "hf": ["transformers>=4.40"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
        "test": ["pytest", "transformers>=4.40", "onnx", "onnxruntime", "onnxscript"],
    },
)
