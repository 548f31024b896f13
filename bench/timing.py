"""Timing a training step the same way in every benchmark: warm-up, synchronised wall clock,
peak memory (CUDA max allocated on GPU; resident-set growth on CPU)."""
from __future__ import annotations

import resource
import time
from typing import Callable, Tuple

import torch


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_step(step: Callable[[], None], warmup: int, iters: int, cuda: bool
              ) -> Tuple[float, int]:
    """Seconds per call of ``step`` after ``warmup`` calls, and the peak memory in bytes."""
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    return seconds, (torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes())
