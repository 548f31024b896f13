"""The library's imports run one way: backbones <- tools' shared modules <- pretrain / detection /
segmentation <- the experiment package and the entry-point scripts.

Read off the source (every ``import`` / ``from ... import``, also inside functions), so a new
upward import fails here rather than as a circular-import error on somebody's machine.
"""
import ast
from pathlib import Path

import pytest

from mae_transfer import SUBPACKAGES

REPO = Path(__file__).resolve().parents[2]
#: tools/ modules that the library may import; every other tools/*.py is an entry-point script.
TOOLS_SHARED = {"atomic", "checkpoints", "convert_checkpoint", "lr_decay", "stand_in",
                "overrides", "divergence", "image_inputs", "synthetic_data", "annotated_sets",
                "run_dir", "preemption", "onnx_check"}
TOOLS_SCRIPTS = {p.stem for p in (REPO / "tools").glob("*.py")} - TOOLS_SHARED - {"__init__"}
#: package -> the top-level packages it must never import.
FORBIDDEN = {
    "backbones": {"tools", "pretrain", "detection", "segmentation", "experiment"},
    "pretrain": {"detection", "segmentation", "experiment"},
    "detection": {"pretrain", "segmentation", "experiment"},
    "segmentation": {"pretrain", "detection", "experiment"},
    "classification": {"detection", "segmentation", "experiment"},
}


def imported_modules(path: Path, root: Path = REPO):
    """Dotted names of every module ``path`` imports (relative imports resolved to absolute), the
    ``mae_transfer.`` prefix taken off so that the rules below name the subpackages."""
    for name in _raw_imports(path, root):
        yield name[len("mae_transfer."):] if name.startswith("mae_transfer.") else name


def _raw_imports(path: Path, root: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def violations(files, forbidden_top, forbidden_tools_modules=TOOLS_SCRIPTS, root=REPO):
    found = []
    for path in files:
        for name in set(imported_modules(path, root)):
            parts = name.split(".")
            if parts[0] in forbidden_top or (parts[0] == "tools" and len(parts) > 1
                                              and parts[1] in forbidden_tools_modules):
                found.append(f"{path.relative_to(root)} imports {name}")
    return sorted(found)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_packages_import_only_downwards(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    assert violations(files, FORBIDDEN[package]) == []


def test_tools_shared_modules_import_only_backbones_and_each_other():
    files = [REPO / "tools" / f"{name}.py" for name in sorted(TOOLS_SHARED)]
    assert all(f.is_file() for f in files)
    assert violations(files, {"pretrain", "detection", "segmentation", "experiment"}) == []


def test_experiment_package_uses_no_entry_point_script_as_a_library():
    files = sorted((REPO / "experiment").rglob("*.py"))
    assert files
    assert violations(files, set()) == []




def bare_imports(files, root=REPO):
    """Absolute imports of a subpackage by its bare name (``import tools.x``), which works only with
    the checkout on ``sys.path`` and would load whatever other ``tools`` a user has there."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(root)}:{node.lineno} imports {n}" for n in names
                      if n and n.split(".")[0] in SUBPACKAGES]
    return sorted(found)


def test_everything_imports_the_package_by_its_one_name():
    """Library, configs, scripts, benchmarks and tests all say ``mae_transfer.<subpackage>``."""
    files = [p for p in REPO.rglob("*.py")
             if not any(part.startswith(".") or part in {"build", "__pycache__"}
                        for part in p.relative_to(REPO).parts)]
    assert len(files) > 100
    assert bare_imports(files) == []


def test_the_bare_name_checker_sees_a_bare_import(tmp_path):
    planted = tmp_path / "x.py"
    planted.write_text("import os\nimport tools.lr_decay\nfrom mae_transfer.tools import atomic\n"
                       "def f():\n    from detection import backbone\n")
    assert bare_imports([planted], root=tmp_path) == ["x.py:2 imports tools.lr_decay",
                                                     "x.py:5 imports detection"]


def test_the_checker_sees_upward_imports(tmp_path):
    """The rule above cannot pass vacuously: a planted upward import is reported."""
    planted = tmp_path / "backbones" / "_planted_for_test.py"
    planted.parent.mkdir()
    planted.write_text("def f():\n    from mae_transfer.tools.checkpoints import read_checkpoint\n"
                       "from ..detection import backbone\nimport torch\n")
    found = violations([planted], FORBIDDEN["backbones"], root=tmp_path)
    assert found == ["backbones/_planted_for_test.py imports detection",
                     "backbones/_planted_for_test.py imports detection.backbone",
                     "backbones/_planted_for_test.py imports tools.checkpoints",
                     "backbones/_planted_for_test.py imports tools.checkpoints.read_checkpoint"]
