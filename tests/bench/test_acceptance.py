"""bench/acceptance.py: the GPU acceptance check, run here at toy sizes on the CPU (the same code,
so that it cannot rot before a GPU comes), and its report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.acceptance import GENERATED_PHOTOS, PARTS, choose_photos, photo_folder
from bench.acceptance_report import TARGETS, markdown, summarize
from mae_transfer.tools.image_inputs import DATA_ENV


def run_acceptance(repo_root, out, *extra, timeout=1800, env=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "bench/acceptance.py", "--device", "cpu", "--tiny",
                           "--out", str(out), *extra], cwd=repo_root, capture_output=True,
                          text=True, timeout=timeout, env=env)


def written(out):
    reports = sorted(out.glob("acceptance-cpu-*.json"))
    assert len(reports) == 1
    return json.loads(reports[0].read_text()), reports[0].with_suffix(".md").read_text()


@pytest.mark.slow
def test_tiny_cpu_run_of_every_part_writes_json_and_table(repo_root, tmp_path):
    """As in a plain clone: the data root (``../shared/data`` unless the environment names
    another) holds no photos, so the loader and pretrain.sh parts run on generated ones."""
    out, empty = tmp_path / "out", tmp_path / "no-shared-data"
    empty.mkdir()
    proc = run_acceptance(repo_root, out, env={DATA_ENV: str(empty)})
    report, table = written(out)
    assert f"no photos under {empty}" in proc.stdout and "generated 640x480 JPEGs" in table
    assert report["photos_note"].startswith(f"no photos under {empty}")
    failed = {r["name"]: r.get("error") for r in report["runs"] if r["status"] != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:])
    assert {r["part"] for r in report["runs"]} == set(PARTS)
    by_name = {r["name"]: r["result"] for r in report["runs"]}
    compiled = by_name["vit_b_compiled"]["visible_only"]
    assert compiled["images_per_s"] > 0 and compiled["first_step_s"] > 0
    assert by_name["vit_b"]["speedup_visible_only"] > 0
    assert by_name["decode_on_device"]["loader"]["decode_on_device"] is True
    assert by_name["decode_on_device"]["end_to_end"]["images_per_s"] > 0
    assert by_name["vitdet_step"]["fused"]["s_per_iter"] > 0
    assert by_name["upernet_step"]["ours"]["s_per_iter"] > 0
    assert by_name["pretrain_sh_compile"]["compiled"]
    assert by_name["train_det_amp"]["autocast"] == "torch.bfloat16"  # train.amp.cpu=True
    assert by_name["train_seg_amp"]["optim_wrapper"].startswith("OptimWrapper")
    assert report["summary"]["comparable_to_targets"] is False
    assert "| part | run | status |" in table and "| target | goal |" in table
    assert table in proc.stdout  # printed too
    assert len(list(out.glob("logs-*/*.log"))) == len(report["runs"])


@pytest.mark.slow
def test_a_failing_part_is_recorded_and_the_rest_still_runs(repo_root, tmp_path):
    proc = run_acceptance(repo_root, tmp_path, "--parts", "loader",
                          "--data", str(tmp_path / "no-photos"), timeout=600)
    report, table = written(tmp_path)
    assert proc.returncode == 1
    assert [r["status"] for r in report["runs"]] == ["failed", "failed"]  # both loader runs tried
    assert all("not a directory" in r["error"] for r in report["runs"])
    assert "failed" in table


def test_report_compares_only_gpu_runs_with_the_targets():
    run = {"part": "pretrain", "name": "vit_b", "status": "ok", "wall_s": 30.0,
           "result": {"visible_only": {"images_per_s": 6000.0, "ms_per_step": 42.0,
                                       "first_step_s": 2.0, "mfu": 0.4, "peak_mem_gib": 30.0},
                      "peak_tflops": 989.4, "speedup_visible_only": 2.9, "flops_ratio": 3.3}}
    broken = {"part": "det", "name": "vitdet_step", "status": "failed", "wall_s": 3.0,
              "error": "ModuleNotFoundError: No module named 'detectron2'"}
    report = {"info": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11",
                       "cpus": 16}, "tiny": False, "runs": [run, broken]}
    summary = summarize(report)
    assert summary["pretrain_vit_b_img_s"] == {**summary["pretrain_vit_b_img_s"],
                                               "measured": 6000.0, "met": True}
    assert summary["pretrain_vit_l_img_s"]["measured"] is None
    assert summary["det_explicit_over_fused"]["met"] is None
    report["summary"] = summary
    table = markdown(report)
    assert "MFU 40.0%" in table and "No module named 'detectron2'" in table
    assert len([line for line in table.splitlines() if line.startswith("| ")]) == \
        1 + len(TARGETS) + 1 + 2  # header, a row per target, header, a row per run
    report["tiny"] = True
    assert summarize(report)["pretrain_vit_b_img_s"]["met"] is None


def test_photo_folder_prefers_the_full_size_coco_photos(tmp_path):
    assert photo_folder(tmp_path) is None
    (tmp_path / "a.jpg").write_bytes(b"x")
    assert photo_folder(tmp_path) == tmp_path
    (tmp_path / "coco-mini" / "coco").mkdir(parents=True)
    (tmp_path / "coco-mini" / "coco" / "b.jpg").write_bytes(b"x")
    assert photo_folder(tmp_path) == tmp_path / "coco-mini"


def test_photos_are_the_data_roots_else_generated_and_an_explicit_folder_is_kept(
        tmp_path, monkeypatch):
    root, work = tmp_path / "data", tmp_path / "work"
    root.mkdir()
    monkeypatch.setenv(DATA_ENV, str(root))
    photos, note = choose_photos(None, tiny=True, work=work)  # a data root without photos
    assert photos == work / "generated-photos" and note.startswith(f"no photos under {root}")
    from PIL import Image

    generated = sorted(photos.iterdir())
    assert len(generated) == GENERATED_PHOTOS["tiny"]
    assert Image.open(generated[0]).size == (640, 480) and photo_folder(photos) == photos
    (root / "coco-mini").mkdir()
    Image.open(generated[0]).save(root / "coco-mini" / "real.jpg")
    assert choose_photos(None, tiny=True, work=work) == (root / "coco-mini", None)
    # --data is never replaced: a folder without photos reaches the parts, which fail naming it
    assert choose_photos(tmp_path / "typo", tiny=True, work=work) == (tmp_path / "typo", None)


def test_gpu_plan_has_the_papers_sizes_and_the_costliest_compile_last(tmp_path):
    """The default (GPU) command lines, checked without a GPU: what will run, in which order."""
    from bench.acceptance import parse_args, plan

    args = parse_args(["--out", str(tmp_path), "--data", str(tmp_path / "photos")])
    assert args.device == "cuda" and args.budget_s == 480 and args.child_env == {}
    runs = plan(args, "test")
    names = [f"{r.part}/{r.name}" for r in runs]
    assert names == ["pretrain/vit_b", "pretrain/vit_b_compiled", "pretrain/vit_l",
                     "loader/decode_in_workers", "loader/decode_on_device", "det/vitdet_step",
                     "seg/upernet_step", "entry/pretrain_sh_compile", "entry/train_det_amp",
                     "entry/train_seg_amp", "pretrain/vit_l_compiled"]

    def flag(run, name):
        return run.cmd[run.cmd.index(name) + 1]

    by_name = dict(zip(names, runs))
    for name, model, batch in (("pretrain/vit_b", "mae_vit_base_patch16", "256"),
                               ("pretrain/vit_l_compiled", "mae_vit_large_patch16", "128")):
        run = by_name[name]
        assert (flag(run, "--model"), flag(run, "--batch_size"), flag(run, "--input_size"),
                flag(run, "--device")) == (model, batch, "224", "cuda")
    assert "--amp" not in by_name["pretrain/vit_b"].cmd  # bf16 is the CUDA default
    assert "--compile" in by_name["pretrain/vit_l_compiled"].cmd
    det = by_name["det/vitdet_step"]
    assert (flag(det, "--size"), flag(det, "--batch"), flag(det, "--amp")) == ("1024", "2", "bf16")
    assert flag(by_name["seg/upernet_step"], "--size") == "512"
    assert "--decode_on_device" in by_name["loader/decode_on_device"].cmd
    assert "train.device=cuda" in by_name["entry/train_det_amp"].cmd
    assert "--compile" in by_name["entry/pretrain_sh_compile"].cmd
    assert sum(r.timeout_s for r in runs) > args.budget_s  # the budget, not the limits, binds
