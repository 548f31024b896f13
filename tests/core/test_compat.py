"""Framework compatibility shims: stand-ins only where the compiled extension is missing."""
import sys

import numpy as np
import pytest
import torch

from mae_transfer.tools.stand_in import install_stand_in


def test_stand_in_is_not_installed_over_a_real_module(tmp_path, monkeypatch):
    pkg = tmp_path / "realpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_ext.py").write_text("def op():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert install_stand_in("realpkg._ext") is False
    import realpkg._ext

    assert realpkg._ext.op() == 42


def test_stand_in_imports_and_raises_clearly_when_an_op_is_called(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakepkg._C", raising=False)
    assert install_stand_in("fakepkg._C") is True
    from fakepkg import _C

    assert _C.__spec__.loader is None and not hasattr(_C, "__path__")
    with pytest.raises(RuntimeError, match=r"fakepkg\._C\.deform_conv_forward needs the compiled"):
        _C.deform_conv_forward(1, 2)
    monkeypatch.delitem(sys.modules, "fakepkg._C")


def test_detectron2_imports_with_v06_on_current_numpy_and_pillow():
    from mae_transfer import detection

    detection.setup()
    import detectron2.data.transforms  # noqa: F401  (Image.LINEAR default argument)
    import detectron2.layers  # noqa: F401  (deform_conv imports detectron2._C)
    from detectron2.structures import BitMasks

    assert np.int is int
    masks = BitMasks(torch.zeros(1, 4, 4, dtype=torch.bool))
    assert masks.get_bounding_boxes().tensor.shape == (1, 4)


def test_mmseg_imports_on_mmcv_lite():
    from mae_transfer import segmentation

    segmentation.setup()
    import mmseg.models  # noqa: F401  (imports mmcv.ops -> mmcv._ext)
    from mmengine.utils.dl_utils.misc import mmcv_full_available

    assert mmcv_full_available() is (not segmentation.uses_stand_in_extension())


# Run in a fresh interpreter: what importing the packages and calling setup() change, process-wide.
PROBE = """
import importlib.util, json, sys, warnings
import numpy as np
from PIL import Image
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.runner import checkpoint as mmengine_checkpoint

EXTENSIONS = ("detectron2._C", "mmcv._ext")

def state():
    return {
        "put_is_mmengine": LocalBackend.put.__module__ == LocalBackend.__module__,
        "local_loader_is_mmengine":
            mmengine_checkpoint.CheckpointLoader._schemes[""] is mmengine_checkpoint.load_from_local,
        "stand_ins": [m for m in EXTENSIONS
                      if getattr(sys.modules.get(m), "__mae_transfer_stand_in__", False)],
        "np_int": "int" in np.__dict__,
        "pil_linear": hasattr(Image, "LINEAR"),
        "warning_filters": sum("pkg_resources" in getattr(f[1], "pattern", "")
                               for f in warnings.filters),
    }

states = [state()]
import mae_transfer.detection, mae_transfer.segmentation
states.append(state())
compiled = [m for m in EXTENSIONS if importlib.util.find_spec(m) is not None]
for _ in range(2):  # a second call changes nothing more
    mae_transfer.detection.setup()
    mae_transfer.segmentation.setup()
    states.append(state())
for m in EXTENSIONS:
    importlib.import_module(m)
print(json.dumps({"states": states, "compiled": compiled}))
"""


def test_importing_the_packages_patches_nothing_and_setup_patches_once(repo_root):
    import json
    import os
    import subprocess

    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=repo_root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    before, imported, after_setup, again = out["states"]
    assert imported == before
    assert before["put_is_mmengine"] and before["local_loader_is_mmengine"]
    assert before["stand_ins"] == [] and before["warning_filters"] == 0
    # setup() fixes what cannot import or run otherwise, and leaves MMEngine's file writes and
    # checkpoint loading alone (those are chosen per run: segmentation.file_backend / .runner)
    missing = [m for m in ("detectron2._C", "mmcv._ext") if m not in out["compiled"]]
    assert after_setup == {"put_is_mmengine": True, "local_loader_is_mmengine": True,
                           "stand_ins": missing, "np_int": True, "pil_linear": True,
                           "warning_filters": 1}
    assert again == after_setup
