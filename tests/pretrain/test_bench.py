"""The throughput benchmark runs on CPU and reports both variants (no timing asserted)."""
import importlib.util
import json

import pytest


@pytest.mark.slow
def test_pretrain_throughput_script(repo_root, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "pretrain_throughput", repo_root / "bench" / "pretrain_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--input_size", "64", "--batch_size", "2",
                       "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    v, a = r["visible_only"], r["all_patches"]
    assert v["images_per_s"] > 0 and a["images_per_s"] > 0
    assert r["speedup_visible_only"] == pytest.approx(v["images_per_s"] / a["images_per_s"])
    # Encoding all 16 patches instead of 4 costs more FLOPs (numbers from fvcore, not timing).
    assert a["train_gflops_per_image"] > v["train_gflops_per_image"] > 0
    assert "mfu" not in v  # no MFU without a GPU peak


def test_peak_table_prefers_specific_names(repo_root):
    spec = importlib.util.spec_from_file_location(
        "pretrain_throughput", repo_root / "bench" / "pretrain_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    keys = list(bench.PEAK_BF16_TFLOPS)
    # A key that is a substring of a later key would shadow it: "H100" must come after "H100 SXM".
    for i, k in enumerate(keys):
        assert not any(k in later for later in keys[i + 1:]), k
