"""detection.compat: Detectron2's environment report (logged by default_setup) works everywhere."""
from detectron2.utils.collect_env import collect_env_info

from mae_transfer import detection


def test_environment_report_works_with_or_without_the_compiled_extension():
    detection.setup()  # conftest did; a second call changes nothing
    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info
    if detection.uses_stand_in_extension():
        assert "not compiled (pure-Python install)" in info
