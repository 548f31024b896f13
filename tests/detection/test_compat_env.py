"""detection.compat: Detectron2's environment report (logged by default_setup) works everywhere."""
import mae_transfer.detection.compat
from detectron2.utils.collect_env import collect_env_info


def test_environment_report_works_with_or_without_the_compiled_extension():
    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info
    if mae_transfer.detection.compat.HAS_STAND_IN_EXTENSION:
        assert "not compiled (pure-Python install)" in info
