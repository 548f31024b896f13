"""The acceptance check's results as a reader wants them: the targets with measured values, and
one table row per run (``bench/acceptance.py`` writes both into its JSON and Markdown)."""
from __future__ import annotations

from typing import Dict, List, Optional

#: The issue's speed targets (one H100, bf16): what each measured figure is compared with.
TARGETS = {
    "pretrain_vit_b_img_s": ("MAE ViT-B/16 pretraining, img/s (synthetic input)", 5500.0),
    "pretrain_vit_l_img_s": ("MAE ViT-L/16 pretraining, img/s (synthetic input)", 2600.0),
    "pretrain_vit_b_end_to_end_img_s": ("MAE ViT-B/16 end to end from JPEG files, img/s", 5500.0),
    "det_explicit_over_fused": ("ViTDet-B step: explicit-attention time / ours (fused)", 1.3),
    "seg_mmseg_over_ours": ("UperNet ViT-B step: MMSeg MAE time / ours", 1.3),
}


def _runs(report: Dict, part: str) -> Dict[str, Dict]:
    return {r["name"]: r for r in report["runs"] if r["part"] == part}


def _result(run: Optional[Dict]) -> Optional[Dict]:
    return run.get("result") if run and run.get("status") == "ok" else None


def _best_pretrain(runs: Dict[str, Dict], key: str) -> Optional[float]:
    speeds = [(_result(runs.get(n)) or {}).get("visible_only", {}).get("images_per_s")
              for n in (f"vit_{key}", f"vit_{key}_compiled")]
    speeds = [s for s in speeds if s]
    return max(speeds) if speeds else None


def summarize(report: Dict) -> Dict:
    """Measured value of each target (None: not measured in this run) and whether it is met.

    A ``--tiny`` or CPU run measures toy models: its figures are never compared with targets.
    """
    pre, loader = _runs(report, "pretrain"), _runs(report, "loader")
    det = _result(_runs(report, "det").get("vitdet_step"))
    seg = _result(_runs(report, "seg").get("upernet_step"))
    e2e = [(_result(loader.get(n)) or {}).get("end_to_end", {}).get("images_per_s")
           for n in ("decode_in_workers", "decode_on_device")]
    e2e = [v for v in e2e if v]
    measured = {
        "pretrain_vit_b_img_s": _best_pretrain(pre, "b"),
        "pretrain_vit_l_img_s": _best_pretrain(pre, "l"),
        "pretrain_vit_b_end_to_end_img_s": max(e2e) if e2e else None,
        "det_explicit_over_fused": det and det.get("time_ratio_explicit_over_fused"),
        "seg_mmseg_over_ours": (1 / seg["time_ratio_ours_over_mmseg"]) if seg else None,
    }
    comparable = not report.get("tiny") and bool(report["info"].get("gpu"))
    out = {}
    for key, (label, target) in TARGETS.items():
        value = measured[key]
        out[key] = {"label": label, "target": target, "measured": value,
                    "met": (value >= target) if comparable and value is not None else None}
    out["comparable_to_targets"] = comparable
    return out


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _pretrain_cell(r: Dict) -> str:
    v = r.get("visible_only", {})
    cell = (f"{_fmt(v.get('images_per_s'))} img/s, {_fmt(v.get('ms_per_step'))} ms/step, "
            f"first step {_fmt(v.get('first_step_s'))} s")
    if v.get("mfu") is not None:
        cell += f", MFU {100 * v['mfu']:.1f}%"
    elif r.get("peak_tflops") is None:
        cell += ", MFU - (no peak for this device)"
    if v.get("peak_mem_gib") is not None:
        cell += f", {v['peak_mem_gib']:.1f} GiB"
    if r.get("speedup_visible_only"):
        cell += (f"; visible-only {r['speedup_visible_only']:.2f}x faster than all patches "
                 f"({r['flops_ratio']:.2f}x FLOPs)")
    return cell


def _loader_cell(r: Dict) -> str:
    ld, e2e = r.get("loader", {}), r.get("end_to_end", {})
    per_core = ld.get("worker_images_per_cpu_s", ld.get("images_per_cpu_s"))
    return (f"end to end {_fmt(e2e.get('images_per_s'))} img/s; loader "
            f"{_fmt(ld.get('images_per_s'))} img/s with {ld.get('num_workers')} workers, "
            f"{_fmt(per_core)} img per worker CPU-second")


def _det_cell(r: Dict) -> str:
    f, e = r.get("fused", {}), r.get("explicit", {})
    gib = 2 ** 30
    return (f"fused {_fmt(f.get('s_per_iter'), 3)} s/iter ({f.get('peak_bytes', 0) / gib:.2f} "
            f"GiB), explicit {_fmt(e.get('s_per_iter'), 3)} s/iter "
            f"({e.get('peak_bytes', 0) / gib:.2f} GiB): explicit/fused time "
            f"x{_fmt(r.get('time_ratio_explicit_over_fused'), 2)}")


def _seg_cell(r: Dict) -> str:
    o, m = r.get("ours", {}), r.get("mmseg", {})
    return (f"ours {_fmt(o.get('s_per_iter'), 3)} s/iter ({_fmt(o.get('peak_gb'), 2)} GiB), "
            f"MMSeg MAE {_fmt(m.get('s_per_iter'), 3)} s/iter ({_fmt(m.get('peak_gb'), 2)} GiB):"
            f" ours/MMSeg time x{_fmt(r.get('time_ratio_ours_over_mmseg'), 2)}")


def _entry_cell(r: Dict) -> str:
    parts = [f"loss {_fmt(r.get('loss'), 4)}"]
    for key in ("iterations", "compiled", "autocast", "optim_wrapper", "picture"):
        if r.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {r[key]}")
    if r.get("metrics"):
        parts.append("val " + ", ".join(f"{k} {v:.1f}" for k, v in r["metrics"].items()))
    if r.get("evaluation"):
        parts.append("COCO evaluation written")
    return "; ".join(parts)


CELLS = {"pretrain": _pretrain_cell, "loader": _loader_cell, "det": _det_cell,
         "seg": _seg_cell, "entry": _entry_cell}


def markdown(report: Dict) -> str:
    info = report["info"]
    device = info.get("gpu") or info["device"]
    lines: List[str] = [
        f"# Acceptance check: {device}{' (tiny sizes)' if report.get('tiny') else ''}",
        "",
        f"torch {info.get('torch')}, {info.get('cpus')} CPU cores, started "
        f"{report.get('started')}, {report.get('wall_s')} s wall.",
        "",
        *([f"Photos: {report['photos_note']}.", ""] if report.get("photos_note") else []),
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    summary = report.get("summary", {})
    for key, (label, _) in TARGETS.items():
        s = summary.get(key, {})
        met = {True: "yes", False: "no", None: "n/a"}[s.get("met")]
        lines.append(f"| {label} | >= {_fmt(s.get('target'))} | {_fmt(s.get('measured'), 2)} | "
                     f"{met} |")
    if not summary.get("comparable_to_targets"):
        lines += ["", "Toy sizes or no GPU: figures are not comparable with the targets."]
    lines += ["", "| part | run | status | wall s | result |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        if run["status"] == "ok":
            cell = CELLS[run["part"]](run.get("result") or {})
        else:
            cell = (run.get("error") or "").replace("\n", " ").replace("|", "/")[:300]
        lines.append(f"| {run['part']} | {run['name']} | {run['status']} | "
                     f"{_fmt(run.get('wall_s'))} | {cell} |")
    if report.get("error"):
        lines += ["", f"Error: {report['error']}"]
    return "\n".join(lines) + "\n"
