"""tools/demo_det.py input handling (the drawing itself runs in test_train_e2e.py)."""
from pathlib import Path

import pytest

from mae_transfer.tools.demo_det import main
from mae_transfer.tools.image_inputs import list_images

TINY = Path(__file__).resolve().parents[2] / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"


def test_inputs_expand_folders_to_sorted_images_and_keep_files(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "c.jpeg"
    single.write_bytes(b"x")
    assert list_images([str(folder), str(single)]) == [folder / "a.PNG", folder / "b.jpg", single]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        list_images([str(empty)])


def test_a_missing_input_ends_with_one_error_line(tmp_path, capsys):
    code = main(["--config", str(TINY), "--weights", "w.pth", "--input", str(tmp_path / "no.jpg"),
                 "--output", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: no image or folder at {tmp_path / 'no.jpg'}"
