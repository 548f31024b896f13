"""Code and docs cite only files that ship with the repository: every ``*.md`` named in a source,
script or doc file and every relative Markdown link resolves to a file here. (Design notes kept
outside the repository, beside a developer's checkout, are not there for a user.)"""
import re
from pathlib import Path

from mae_transfer import SUBPACKAGES

REPO = Path(__file__).resolve().parents[2]
#: Named on purpose, not in this repository: the official MAE repository's own documents (the
#: reference a recipe is compared with) and the table an e2e run writes into its output folder.
ELSEWHERE = {"PRETRAIN.md", "FINETUNE.md", "results.md", "OUT/results.md"}
MD_NAME = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_]\.md\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def text_files(root=REPO):
    return sorted(p for p in root.rglob("*") if p.suffix in (".py", ".md", ".sh") and p.is_file()
                  and not any(part.startswith(".") or part in {"build", "__pycache__"}
                              for part in p.relative_to(root).parts))


def unresolved(files, root=REPO):
    """``file:line name`` for every cited ``.md`` file and relative link that is not a file here."""
    found = []
    for path in files:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            local = re.sub(r"[a-z]+://\S+", "", line)  # web addresses name no file here
            names = [n for n in MD_NAME.findall(local) if n not in ELSEWHERE]
            if path.suffix == ".md":
                names += [t.split("#")[0] for t in MD_LINK.findall(local) if not t.startswith("#")]
            for name in dict.fromkeys(names):
                bases = (path.parent, root, root / "docs")
                if not any((base / name).is_file() for base in bases):
                    found.append(f"{path.relative_to(root)}:{lineno} {name}")
    return found


def test_every_cited_file_is_in_the_repository():
    files = [p for p in text_files() if p != Path(__file__).resolve()]  # this one plants some
    assert len([p for p in files if p.suffix == ".md"]) >= 10
    assert unresolved(files) == []


def test_the_checker_sees_a_file_from_outside(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    doc = tmp_path / "README.md"
    doc.write_text("Rule (DESIGN.md).\nSee [here](docs/here.md#part), [gone](docs/gone.md),\n"
                   "[site](https://example.org/a.md) and the official PRETRAIN.md.\n")
    code = tmp_path / "x.py"
    code.write_text('"""As in docs/here.md and here.md; notes: ENVIRONMENT.md."""\n')
    assert unresolved([doc, code], root=tmp_path) == [
        "README.md:1 DESIGN.md", "README.md:2 docs/gone.md",
        "x.py:1 ENVIRONMENT.md"]


DOTTED = re.compile(r"`((?:mae_transfer\.)?(?:%s)\.[A-Za-z_][A-Za-z0-9_.]*)" % "|".join(SUBPACKAGES))


def unimportable_names(docs, root=REPO):
    """Dotted names in the docs that are not ``mae_transfer.<module>[.<name defined in it>]``:
    bare subpackage names (``tools.lr_decay``), or modules and names the code does not have."""
    found = []
    for doc in docs:
        for name in DOTTED.findall(doc.read_text()):
            parts = name.split(".")
            if parts[0] != "mae_transfer":
                found.append(f"{doc.name}: {name} (the import name is mae_transfer.{name})")
                continue
            for cut in range(len(parts), 1, -1):  # longest module path that exists
                module = root.joinpath(*parts[1:cut])
                source = (module.with_suffix(".py") if module.with_suffix(".py").is_file()
                          else module / "__init__.py")
                if source.is_file():
                    rest = parts[cut:]
                    if rest and not re.search(rf"\b{rest[0]}\b", source.read_text()):
                        found.append(f"{doc.name}: {name} ({rest[0]} not in {source.name})")
                    break
            else:
                found.append(f"{doc.name}: {name} (no such module)")
    return found


def test_docs_name_modules_by_the_one_import_name():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert unimportable_names(docs) == []


def test_the_name_checker_sees_bare_and_unknown_names(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "lr_decay.py").write_text("def param_groups(): pass\n")
    doc = tmp_path / "doc.md"
    doc.write_text("`mae_transfer.tools.lr_decay.param_groups`, `tools.lr_decay`,\n"
                   "`mae_transfer.tools.lr_decay.gone`, `mae_transfer.tools.nothing`\n")
    assert unimportable_names([doc], root=tmp_path) == [
        "doc.md: tools.lr_decay (the import name is mae_transfer.tools.lr_decay)",
        "doc.md: mae_transfer.tools.lr_decay.gone (gone not in lr_decay.py)",
        "doc.md: mae_transfer.tools.nothing (no such module)"]
