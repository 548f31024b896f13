"""COCO evaluation time: pycocotools' COCOeval vs ours (faster-coco-eval), bbox and segm, one run.

    nice python bench/coco_eval_speed.py                  # 5,000 images, 80 categories (minutes)
    python bench/coco_eval_speed.py --images 200 --json /tmp/coco_eval_speed.json

The data is generated (``mae_transfer.tools.synthetic_detections``): COCO-val-sized ground truth
(640x480 images, 1-12 polygon objects each, crowd regions as uncompressed RLE, 80 categories) and
detections in Detectron2's output format (boxes, compressed RLE masks, scores with ties; misses,
wrong classes, duplicates, 3 false positives per image). One evaluation is what Detectron2's
``_evaluate_predictions_on_coco`` runs per task, the step every ViTDet evaluation pays:
``loadRes`` (pycocotools' for both), then the evaluator's ``evaluate``, ``accumulate``,
``summarize``; each implementation gets its own fresh copy of the ground truth (pycocotools
converts the ground-truth polygons to RLE in place). The numbers are checked equal (all 12
``stats`` to 1e-12) before any time is reported; the ratios are pycocotools' time / ours, in wall
time and in CPU time of the process (faster-coco-eval computes mask IoUs in threads, up to 8, so
its CPU time can exceed its wall time on several cores; on a shared machine the CPU time is the
steadier figure).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mae_transfer import detection  # noqa: E402
from mae_transfer.tools.synthetic_detections import (coco_api, perturbed_detections,  # noqa: E402
                                                     synthetic_ground_truth)

TASKS = ("bbox", "segm")



def time_evaluation(cocoeval_class, dataset: dict, detections: list, task: str):
    """(wall seconds, CPU seconds of this process, summary stats) of one evaluation of ``task``
    by ``cocoeval_class``."""
    gt = coco_api(dataset)
    results = copy.deepcopy(detections)
    if task == "segm":  # as Detectron2: mask areas, not box areas, decide small / medium / large
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        start, cpu_start = time.perf_counter(), time.process_time()
        evaluation = cocoeval_class(gt, gt.loadRes(results), task)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu, np.asarray(evaluation.stats, dtype=float)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="evaluations per implementation and task; the fastest is reported")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)

    detection.setup()  # the framework fixes (detection/compat.py), before any detectron2 import
    from pycocotools.cocoeval import COCOeval

    from mae_transfer.detection.coco_evaluator import (fast_cocoeval_class,
                                                       faster_coco_eval_version,
                                                       pycocotools_label)

    version = faster_coco_eval_version()
    if version is None:
        print("error: faster-coco-eval cannot be imported (pip install faster-coco-eval)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    dataset = synthetic_ground_truth(args.images, num_categories=args.categories, seed=args.seed)
    detections = perturbed_detections(dataset, seed=args.seed + 1)
    print(f"COCO evaluation: {args.images} images, {len(dataset['annotations'])} ground-truth "
          f"objects, {len(detections)} detections, {args.categories} categories (generated in "
          f"{time.perf_counter() - start:.0f} s); {os.cpu_count()} CPU cores; "
          f"{pycocotools_label()} vs faster-coco-eval {version}", flush=True)

    implementations = {"pycocotools": COCOeval, "ours": fast_cocoeval_class([])}
    results = {}
    for task in TASKS:
        times, cpu, stats = {}, {}, {}
        for name, cls in implementations.items():
            runs = [time_evaluation(cls, dataset, detections, task) for _ in range(args.repeat)]
            times[name] = min(r[0] for r in runs)
            cpu[name] = min(r[1] for r in runs)
            stats[name] = runs[0][2]
            print(f"  {task}  {name:11s}  {times[name]:7.2f} s wall  {cpu[name]:7.2f} s CPU",
                  flush=True)
        difference = float(np.abs(stats["ours"] - stats["pycocotools"]).max())
        if difference > 1e-12:
            print(f"error: {task}: the numbers differ by {difference:.3g}:\n"
                  f"  pycocotools {stats['pycocotools'].tolist()}\n"
                  f"  ours        {stats['ours'].tolist()}", file=sys.stderr)
            return 1
        ratio = times["pycocotools"] / times["ours"]
        cpu_ratio = cpu["pycocotools"] / cpu["ours"]
        print(f"  {task}  pycocotools / ours: x{ratio:.2f} wall, x{cpu_ratio:.2f} CPU  "
              f"(AP {100 * stats['ours'][0]:.2f}; 12 stats equal to {difference:.1g})",
              flush=True)
        results[task] = {"seconds": times, "cpu_seconds": cpu,
                         "ratio_pycocotools_over_ours": ratio,
                         "cpu_ratio_pycocotools_over_ours": cpu_ratio,
                         "stats": stats["pycocotools"].tolist(),
                         "max_stats_difference": difference}
    if args.json:
        results["settings"] = {"images": args.images, "categories": args.categories,
                               "seed": args.seed, "repeat": args.repeat,
                               "objects": len(dataset["annotations"]),
                               "detections": len(detections), "cpu_count": os.cpu_count(),
                               "machine": platform.machine(), "python": platform.python_version(),
                               "pycocotools": pycocotools_label(), "faster_coco_eval": version}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
