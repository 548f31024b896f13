"""Install Detectron2 where the official build is not available.

Why this exists: the official detectron2 is not on the package registry (it is built from its
source repository). The registry's ``pb1-detectron2==0.6`` is upstream v0.6 as an sdist *without*
its C++ sources, so a plain ``pip install`` dies in the extension build. Three edits make it a
pure-Python install that runs Mask R-CNN (ROIAlign and NMS come from torchvision), and a fourth
keeps it from putting a generic name on the user's import path:

1. skip the C++ extension (``ext_modules=[]``);
2. move ``detectron2/model_zoo/configs`` to ``configs/``, where ``setup.py`` looks for the model-zoo
   configs (otherwise they are silently left out of the install);
3. relax the ``black==21.4b2`` pin, whose command line breaks with current ``click``;
4. leave out upstream's ``tools/`` scripts, which its ``find_packages`` installs as a top-level
   package named ``tools`` (any ``import tools`` of the user's would then load Detectron2's).

If any detectron2 is importable already (e.g. an official build from source), nothing is done:
a real compiled detectron2 always wins. Usage: ``python tools/install_detectron2.py [--force]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST = "pb1-detectron2==0.6"


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def patch_source(src: pathlib.Path) -> None:
    """Apply the four edits described in the module docstring to an unpacked sdist."""
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    for old, new in [
        ("ext_modules=get_extensions(),", "ext_modules=[],  # mae-transfer: no C++ sources in sdist"),
        ('"black==21.4b2",', '"black",'),
        ('find_packages(exclude=("configs", "tests*"))',
         'find_packages(exclude=("configs", "tests*", "tools", "tools.*"))'),
    ]:
        if old not in text:
            raise RuntimeError(f"{setup_py}: expected to find {old!r}; the sdist changed")
        text = text.replace(old, new)
    setup_py.write_text(text)
    packaged = src / "detectron2" / "model_zoo" / "configs"
    if packaged.is_dir() and not (src / "configs").exists():
        shutil.move(str(packaged), str(src / "configs"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    args = ap.parse_args()
    if importlib.util.find_spec("detectron2") is not None and not args.force:
        import detectron2

        print(f"detectron2 {detectron2.__version__} already installed at "
              f"{pathlib.Path(detectron2.__file__).parent}; leaving it as is")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        # --no-build-isolation: its setup.py imports torch, which the isolated build env lacks.
        pip("download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            "-d", str(tmp_path), SDIST)
        archive = next(tmp_path.glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path, filter="data")
        src = next(p for p in tmp_path.iterdir() if p.is_dir())
        patch_source(src)
        pip("install", "--no-build-isolation", str(src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
