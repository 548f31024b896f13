"""The install exposes one import name, ``mae_transfer``, and nothing generic beside it."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from mae_transfer import SUBPACKAGES


def _run(code: str, cwd) -> str:
    """Run ``code`` in a fresh interpreter in ``cwd``, with what the install gives and nothing else
    (a PYTHONPATH naming a checkout would put its folders on the path by hand)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, text=True,
                          capture_output=True, env=env).stdout


def test_installed_package_imports_from_any_folder_and_exposes_no_bare_names(tmp_path):
    out = _run("import importlib.util, mae_transfer.detection, mae_transfer.segmentation, "
               "mae_transfer.tools.lr_decay, mae_transfer.pretrain.main, mae_transfer.experiment\n"
               f"print(sorted(n for n in {SUBPACKAGES!r} if importlib.util.find_spec(n)))\n"
               "print(mae_transfer.tools.lr_decay.__name__)", cwd=tmp_path)
    assert out.split("\n")[:2] == ["[]", "mae_transfer.tools.lr_decay"]


def test_checkout_without_install_finds_the_subpackages_beside_the_package(tmp_path, repo_root):
    """A checkout used through PYTHONPATH (no install at all) resolves the same modules."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import mae_transfer.backbones.vit as v; print(v.__file__)") % str(repo_root)
    out = _run("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
               "if 'editable' not in getattr(f, '__module__', '') + str(f)]\n" + code, tmp_path)
    assert out.strip() == str(repo_root / "backbones" / "vit.py")


@pytest.mark.slow
def test_wheel_holds_only_mae_transfer_with_the_configs(tmp_path, repo_root):
    src = tmp_path / "src"  # a copy: setuptools leaves build/ in the tree it builds
    shutil.copytree(repo_root, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info",
                                                                  "__pycache__", "output*"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    wheel, = tmp_path.glob("mae_transfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mae_transfer"}
    for sub in SUBPACKAGES:
        assert f"mae_transfer/{sub}/__init__.py" in names
    assert "mae_transfer/detection/configs/mask_rcnn_vitdet_b_coco.py" in names
    assert "mae_transfer/detection/configs/common/recipe.py" in names
    assert "mae_transfer/segmentation/configs/upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py" in names
    assert not any(n.startswith(("mae_transfer/tests/", "mae_transfer/bench/")) for n in names)
