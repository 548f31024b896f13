"""Frozen-encoder features of a whole image set, computed once, shared by every process.

Why a module of its own: the k-NN monitor (``classification.knn``) needs every train feature on
the process that votes, computed once per checkpoint, in batches, under bf16 autocast on a GPU,
and, with several processes (torchrun), each process encoding its own share and the shares
gathered back in dataset order (as DINO's ``extract_features`` does with an all-gather).

Features are the final normed encoder output (``classification.encoder.encoder_features``): the
cls token (``pool="cls"``, MAE's linear-probe default) or the mean of the patch tokens
(``pool="mean"``, like MAE's ``--global_pool`` but without its ``fc_norm``, a fine-tuned layer
that a pretrained encoder does not have), L2-normalised in float32.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from mae_transfer.classification.encoder import encoder_features
from mae_transfer.classification.knn import l2_normalise

logger = logging.getLogger("mae_transfer.classification")

#: ``encoder_features``' pools: the cls token, or the mean of the patch tokens.
POOLS = ("cls", "mean")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset: every item exactly once over all
    processes, in order (``DistributedSampler`` pads shards with repeats, which would count
    some val images twice)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def encode(model, images: torch.Tensor, pool: str = "cls",
           amp_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """L2-normalised float32 features ``(B, D)`` of a batch of normalised images
    (``classification.encoder.encoder_features`` under autocast when ``amp_dtype`` is given)."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features = encoder_features(model, images, pool)
    return l2_normalise(features)


def gather_rows(local: torch.Tensor, local_index: torch.Tensor, total: int) -> torch.Tensor:
    """Rows computed by each process (``local[i]`` is item ``local_index[i]``) -> all ``total``
    rows in item order, on every process. Shards may differ in length by one: each is padded
    to the longest before the all-gather and the pads (index -1) dropped after."""
    out = local.new_zeros((total,) + tuple(local.shape[1:]))
    if not _distributed():
        out[local_index.long()] = local
        return out
    world = dist.get_world_size()
    longest = math.ceil(total / world)
    pad = longest - local.shape[0]
    padded = torch.cat([local, local.new_zeros((pad,) + tuple(local.shape[1:]))])
    index = torch.cat([local_index.long(), local_index.new_full((pad,), -1).long()])
    rows = [torch.empty_like(padded) for _ in range(world)]
    indices = [torch.empty_like(index) for _ in range(world)]
    dist.all_gather(rows, padded)
    dist.all_gather(indices, index)
    rows, index = torch.cat(rows), torch.cat(indices)
    keep = index >= 0
    out[index[keep]] = rows[keep]
    return out


def extract_features(model, dataset: Dataset, device: torch.device, *, batch_size: int,
                     num_workers: int = 0, pool: str = "cls",
                     amp_dtype: Optional[torch.dtype] = None, gather: bool = True,
                     name: str = "images", log_every: float = 30.0
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode ``dataset`` (items ``(image tensor, class index)``) -> ``(features, labels,
    indices)`` on ``device``.

    With several processes each encodes its shard (``ShardSampler``); ``gather=True`` returns
    every row in dataset order on every process (``indices`` = 0..N-1), ``gather=False`` only
    this process's rows and their dataset indices (the val queries, which each process scores
    on its own). Progress is logged every ``log_every`` seconds.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    sampler = ShardSampler(len(dataset), rank, world)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    model.eval()
    feats, labels = [], []
    start = last = time.perf_counter()
    done = 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        feats.append(encode(model, images, pool, amp_dtype))
        labels.append(torch.as_tensor(targets).to(device))
        done += images.shape[0]
        now = time.perf_counter()
        if now - last >= log_every:
            last = now
            logger.info("%s: %d / %d encoded (%.0f images/s%s)", name, done, len(sampler),
                        done / (now - start), "" if world == 1 else f", rank {rank}")
    if feats:
        local, local_labels = torch.cat(feats), torch.cat(labels).long()
    else:  # more processes than images
        dim = getattr(model, "embed_dim", 0)
        local = torch.zeros(0, dim, device=device)
        local_labels = torch.zeros(0, dtype=torch.long, device=device)
    local_index = torch.tensor(sampler.indices, dtype=torch.long, device=device)
    elapsed = time.perf_counter() - start
    logger.info("%s: %d encoded in %.1f s (%.0f images/s%s)", name, done, elapsed,
                done / max(elapsed, 1e-9), "" if world == 1 else f" on rank {rank}")
    if not gather:
        return local, local_labels, local_index
    total = len(dataset)
    features = gather_rows(local, local_index, total)
    all_labels = gather_rows(local_labels.view(-1, 1), local_index, total).view(-1)
    return features, all_labels, torch.arange(total, device=device)

