"""One list of image file suffixes for the whole project (``tools/image_inputs.py``): every part
that looks for photos takes the same files, and no module keeps a list of its own."""
import ast
from pathlib import Path

import numpy as np
from PIL import Image

from mae_transfer.tools import image_inputs
from mae_transfer.tools.image_inputs import IMAGE_SUFFIXES, data_root, list_images

REPO = Path(__file__).resolve().parents[2]


def photo_folder(tmp_path):
    """One small photo per listed suffix (an upper-case name too), and files that are not
    images: a text file and a GIF (not on the list, as in torchvision's ImageFolder)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    for i, suffix in enumerate(IMAGE_SUFFIXES):
        image = Image.fromarray(pixels)
        name = f"p{i}{suffix.upper() if i == 0 else suffix}"
        (image.convert("L") if suffix == ".pgm" else image).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(pixels).save(folder / "anim.gif")
    return folder


def test_every_part_takes_the_same_photos(tmp_path):
    from mae_transfer.experiment.driver import Run, shrink_images
    from mae_transfer.experiment.paste_dataset import list_backgrounds
    from mae_transfer.pretrain.data import find_images

    folder = photo_folder(tmp_path)
    expected = sorted(p for p in folder.iterdir() if p.suffix.lower() not in (".txt", ".gif"))
    assert len(expected) == len(IMAGE_SUFFIXES) == 9
    assert find_images(folder) == expected  # MAE pretraining
    assert list_images([str(folder)]) == expected  # demos
    assert list_backgrounds(folder, keep_lookalikes=True) == (expected, 0)  # paste set
    shrunk = shrink_images(Run(out=tmp_path / "e2e", resume=False), folder, short_side=16)
    assert sorted(p.stem for p in shrunk.iterdir()) == [p.stem for p in expected]  # e2e photos


def suffix_lists(files, root=REPO):
    """Literal tuples, lists and sets of two or more image suffixes (``".jpg", ".png"``, ...)."""
    known = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value.lower() for e in node.elts
                         if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(names & known) >= 2:
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_module_keeps_its_own_list_of_image_suffixes():
    files = [p for p in REPO.rglob("*.py") if "tests" not in p.relative_to(REPO).parts
             and not any(part.startswith(".") or part == "build"
                         for part in p.relative_to(REPO).parts)]
    assert len(files) > 50
    # the list and its JPEG subset, both in tools/image_inputs.py
    assert [hit.split(":")[0] for hit in suffix_lists(files)] == ["tools/image_inputs.py"] * 2


def test_the_checker_sees_a_planted_list(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("EXT = {'.JPG', '.png'}\nsuffix = ('.jpg', '_x')\nok = ['.json', '.txt']\n")
    assert suffix_lists([planted], root=tmp_path) == ["x.py:1"]


def test_data_root_is_the_environment_variable_else_the_shared_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(image_inputs.DATA_ENV, str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv(image_inputs.DATA_ENV)
    assert data_root() == REPO.parent / "shared" / "data"
