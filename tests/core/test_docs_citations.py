"""Code and docs cite only files that ship with the repository: every ``*.md`` named in a source,
script or doc file and every relative Markdown link resolves to a file here. (Design notes kept
outside the repository, beside a developer's checkout, are not there for a user.)"""
import re
from pathlib import Path

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
