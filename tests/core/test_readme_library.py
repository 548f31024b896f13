"""README's "Using it as a library" snippet runs as written (with the tiny ViT in place of ViT-B,
so that it takes a second): the import name, the calls and the shapes it states."""
import re
from pathlib import Path

import torch

from mae_transfer.backbones import build_vit
from mae_transfer.tools.checkpoints import write_checkpoint

REPO = Path(__file__).resolve().parents[2]


def library_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Using it as a library", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_snippet_runs_with_the_one_import_name(tmp_path, monkeypatch):
    code = library_snippet()
    imports = re.findall(r"^(?:from|import) (\S+)", code, re.M)
    assert [name for name in imports if name != "torch"] == [
        "mae_transfer.backbones", "mae_transfer.tools.lr_decay"]
    assert "(2, 197, 768)" in code  # what it states for ViT-B: checked with the tiny ViT's width
    encoder = build_vit("vit_mini_patch16", img_size=224)
    write_checkpoint(encoder.state_dict(), tmp_path / "out" / "mae" / "encoder.safetensors")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace("vit_base_patch16", "vit_mini_patch16"), "README.md", "exec"), scope)
    assert scope["tokens"].shape == (2, 197, 64)
    assert scope["report"].missing_keys == [] and scope["report"].unexpected_keys == []
    assert torch.equal(scope["vit"].blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    groups = scope["optimizer"].param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(encoder.parameters()))
    assert max(g["lr"] for g in groups) == 1e-4
