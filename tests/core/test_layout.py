"""The library's imports run one way: backbones <- tools' shared modules <- pretrain / detection /
segmentation <- the experiment package and the entry-point scripts.

Read off the source (every ``import`` / ``from ... import``, also inside functions), so a new
upward import fails here rather than as a circular-import error on somebody's machine.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: tools/ modules that the library may import; every other tools/*.py is an entry-point script.
TOOLS_SHARED = {"atomic", "checkpoints", "convert_checkpoint", "lr_decay", "stand_in",
                "image_inputs", "synthetic_data", "annotated_sets"}
TOOLS_SCRIPTS = {p.stem for p in (REPO / "tools").glob("*.py")} - TOOLS_SHARED - {"__init__"}
#: package -> the top-level packages it must never import.
FORBIDDEN = {
    "backbones": {"tools", "pretrain", "detection", "segmentation", "experiment"},
    "pretrain": {"detection", "segmentation", "experiment"},
    "detection": {"pretrain", "segmentation", "experiment"},
    "segmentation": {"pretrain", "detection", "experiment"},
}


def imported_modules(path: Path, root: Path = REPO):
    """Dotted names of every module ``path`` imports (relative imports resolved to absolute)."""
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


def test_the_checker_sees_upward_imports(tmp_path):
    """The rule above cannot pass vacuously: a planted upward import is reported."""
    planted = tmp_path / "backbones" / "_planted_for_test.py"
    planted.parent.mkdir()
    planted.write_text("def f():\n    from tools.checkpoints import read_checkpoint\n"
                       "from ..detection import backbone\nimport torch\n")
    found = violations([planted], FORBIDDEN["backbones"], root=tmp_path)
    assert found == ["backbones/_planted_for_test.py imports detection",
                     "backbones/_planted_for_test.py imports detection.backbone",
                     "backbones/_planted_for_test.py imports tools.checkpoints",
                     "backbones/_planted_for_test.py imports tools.checkpoints.read_checkpoint"]
