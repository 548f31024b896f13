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
    import mae_transfer.detection.compat  # noqa: F401
    import detectron2.data.transforms  # noqa: F401  (Image.LINEAR default argument)
    import detectron2.layers  # noqa: F401  (deform_conv imports detectron2._C)
    from detectron2.structures import BitMasks

    assert np.int is int
    masks = BitMasks(torch.zeros(1, 4, 4, dtype=torch.bool))
    assert masks.get_bounding_boxes().tensor.shape == (1, 4)


def test_mmseg_imports_on_mmcv_lite_and_runner_checkpoints_load(tmp_path):
    import mae_transfer.segmentation.compat  # noqa: F401
    import mmseg.models  # noqa: F401  (imports mmcv.ops -> mmcv._ext)
    from mmengine.runner.checkpoint import CheckpointLoader
    from mmengine.utils.dl_utils.misc import mmcv_full_available

    assert mmcv_full_available() is (not mae_transfer.segmentation.compat.HAS_STAND_IN_EXTENSION)
    path = tmp_path / "iter_10.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"x": np.arange(3)}}, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # what breaks mmengine resume on torch >= 2.6
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert np.array_equal(loaded["message_hub"]["x"], np.arange(3))
