"""bench/coco_eval_speed.py at a toy size: it times both implementations for bbox and segm,
writes the ratios, and refuses to report a time when the numbers differ."""
from __future__ import annotations

import json

from mae_transfer import detection

detection.setup()  # before the bench's imports of Detectron2 / our evaluator

from bench.coco_eval_speed import main  # noqa: E402
from mae_transfer.detection import coco_evaluator  # noqa: E402


def test_times_both_implementations_and_checks_the_numbers(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["--images", "12", "--categories", "8", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    for task in ("bbox", "segm"):
        result = saved[task]
        assert set(result["seconds"]) == {"pycocotools", "ours"}
        assert result["ratio_pycocotools_over_ours"] == (
            result["seconds"]["pycocotools"] / result["seconds"]["ours"])
        assert len(result["stats"]) == 12 and result["max_stats_difference"] <= 1e-12
        assert 0 < result["stats"][0] < 1
    assert saved["settings"]["images"] == 12 and saved["settings"]["detections"] > 12
    assert "pycocotools / ours" in capsys.readouterr().out


def test_different_numbers_are_an_error_not_a_timing(tmp_path, monkeypatch, capsys):
    real = coco_evaluator.fast_cocoeval_class

    def off_by_a_little(evaluated):
        class Off(real(evaluated)):
            def summarize(self):
                super().summarize()
                self.stats = self.stats + 1e-9

        return Off

    monkeypatch.setattr(coco_evaluator, "fast_cocoeval_class", off_by_a_little)
    out = tmp_path / "speed.json"
    assert main(["--images", "4", "--categories", "3", "--json", str(out)]) == 1
    assert "bbox: the numbers differ by 1e-09" in capsys.readouterr().err
    assert not out.exists()
