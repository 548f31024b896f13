"""Weighted k-nearest-neighbour classification of frozen features, as DINO / DINOv2 evaluate.

Why: a k-NN accuracy needs no training, so it can be computed on every pretraining checkpoint
and tells within minutes whether the encoder learnt anything (issue #24), before GPU-days go
into COCO and ADE20K. The rule is the one of facebookresearch/dino ``eval_knn.py`` and
facebookresearch/dinov2 ``dinov2/eval/knn.py``:

- features are L2-normalised, so a dot product is the cosine similarity;
- each query keeps its ``k`` most similar train features (default k=20, DINO's recommendation);
- neighbour ``j`` votes for its class with weight ``exp(sim_j / T)`` (T = 0.07); the class scores
  are the sums of these weights (``class_scores`` divides them by their total, as DINOv2's
  softmax does: the ranking of the classes is the same);
- top-1 / top-5 accuracy from the ranking of the class scores.

The similarity matrix is never built whole: queries are taken ``query_chunk`` at a time, and
each query chunk meets the train features ``train_chunk`` at a time, keeping a running top-k, so
1.3M ImageNet train features need ``query_chunk x train_chunk`` similarities at once, not
50,000 x 1.3M.

Ties, made deterministic here (the references leave them to the sort): two classes with equal
scores rank by class index, the lower first; a class without a vote is never a top-n hit (DINO
counts whatever its sort puts among the first ``min(5, k)`` classes, zero-score ones included).
Neighbours with exactly equal similarity at the k-th place are chosen by ``torch.topk`` (as in
the references); among the candidates kept, equal similarities are ordered by train index, so
the chunk sizes do not change the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

import torch

#: DINO / DINOv2 settings: 20 neighbours "usually work the best"; temperature of the vote.
DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
#: Accuracies reported for each k: top-1 and top-5 (top-5 of at most the number of classes).
TOPN = (1, 5)


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32), so that dot products are cosine similarities."""
    return torch.nn.functional.normalize(features.float(), dim=1, p=2)


def vote_weights(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp(sim / T)`` up to one factor per query: ``exp((sim - max sim) / T)``.

    The common factor changes no ranking and keeps small temperatures from overflowing float32
    (``exp(1 / 0.01)`` does not fit).
    """
    if temperature <= 0:
        raise ValueError(f"the temperature must be > 0, got {temperature}")
    top = similarities.max(dim=1, keepdim=True).values
    return torch.exp((similarities - top) / temperature)


def class_scores(similarities: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int,
                 temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Weighted vote of ``(Q, k)`` neighbours -> ``(Q, num_classes)`` scores summing to 1.

    ``scores[q, c]`` = sum over the neighbours of class ``c`` of ``exp(sim / T)``, divided by
    the sum over all ``k`` neighbours.
    """
    weights = vote_weights(similarities.float(), temperature)
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype,
                         device=weights.device)
    scores.scatter_add_(1, neighbour_labels.long(), weights)
    return scores / scores.sum(dim=1, keepdim=True)


def ranked_classes(scores: torch.Tensor) -> torch.Tensor:
    """Class indices by falling score; equal scores keep the lower class index first."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def topn_hits(scores: torch.Tensor, targets: torch.Tensor, topn: Iterable[int] = TOPN,
              voted: torch.Tensor | None = None) -> Dict[int, int]:
    """How many queries have their target among the ``n`` best-scored classes, for each ``n``
    (``n`` capped at the number of classes). A target without any vote is never a hit:
    ``voted`` (bool, one per query) says whether a neighbour of the target's class was among
    the k; without it, a score above zero does (a far neighbour's weight may underflow to 0)."""
    order = ranked_classes(scores)
    targets = targets.to(order.device).long().view(-1, 1)
    if voted is None:
        voted = scores.gather(1, targets).view(-1) > 0
    hits = {}
    for n in topn:
        found = (order[:, :min(n, scores.shape[1])] == targets).any(dim=1)
        hits[n] = int((found & voted).sum())
    return hits


def _order_candidates(sims: torch.Tensor, index: torch.Tensor) -> Tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Sort each row by falling similarity, equal similarities by rising train index."""
    by_index = torch.sort(index, dim=1, stable=True).indices
    sims, index = sims.gather(1, by_index), index.gather(1, by_index)
    by_sim = torch.sort(sims, dim=1, descending=True, stable=True).indices
    return sims.gather(1, by_sim), index.gather(1, by_sim)


def nearest_neighbours(queries: torch.Tensor, train: torch.Tensor, k: int,
                       train_chunk: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` train rows most similar to each query: ``(similarities, train indices)``,
    each ``(Q, k)``, most similar first. ``train`` is met ``train_chunk`` rows at a time with a
    running top-k, so at most ``Q x train_chunk`` similarities exist at once."""
    if not 1 <= k <= train.shape[0]:
        raise ValueError(f"k={k} neighbours asked of {train.shape[0]} train features")
    best_sims = best_index = None
    for start in range(0, train.shape[0], train_chunk):
        block = train[start:start + train_chunk]
        sims = queries @ block.T
        sims, index = sims.topk(min(k, block.shape[0]), dim=1, largest=True, sorted=False)
        index = index + start
        if best_sims is not None:
            sims, index = torch.cat([best_sims, sims], 1), torch.cat([best_index, index], 1)
        sims, index = _order_candidates(sims, index)
        best_sims, best_index = sims[:, :k], index[:, :k]
    return best_sims, best_index


@dataclass
class KnnResult:
    """Hits and query count per k; accuracies in percent, as the references print them."""

    hits: Dict[int, Dict[int, int]]  # k -> n -> queries whose target is in the top n
    total: int
    num_classes: int

    def accuracy(self, k: int, n: int) -> float:
        return 100.0 * self.hits[k][n] / max(self.total, 1)

    def as_dict(self) -> Dict[str, Dict[str, float]]:
        """``{"20": {"top1": 71.0, "top5": 90.0}, ...}`` (JSON keys are strings)."""
        return {str(k): {f"top{n}": self.accuracy(k, n) for n in TOPN} for k in self.hits}


def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, ks: Sequence[int] = (DEFAULT_K,),
                 temperature: float = DEFAULT_TEMPERATURE, num_classes: int | None = None,
                 query_chunk: int = 1024, train_chunk: int = 65536) -> KnnResult:
    """Weighted k-NN hits of ``queries`` against ``train`` for every k in ``ks``.

    Features are expected L2-normalised (``l2_normalise``); labels are class indices
    ``0..num_classes-1`` (default: one more than the largest label seen). Neighbours are found
    once for the largest k; each smaller k votes with the first k of them, as DINOv2 does.
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks:
        raise ValueError("no k given")
    if train.shape[0] != train_labels.shape[0] or queries.shape[0] != query_labels.shape[0]:
        raise ValueError("features and labels differ in length")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    for name, labels in (("train", train_labels), ("query", query_labels)):
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}, found "
                             f"{int(labels.min())}..{int(labels.max())}")
    train_labels = train_labels.to(train.device).long()
    hits = {k: {n: 0 for n in TOPN} for k in ks}
    for start in range(0, queries.shape[0], query_chunk):
        chunk = queries[start:start + query_chunk].to(train.device)
        targets = query_labels[start:start + query_chunk].to(train.device)
        sims, index = nearest_neighbours(chunk, train, ks[-1], train_chunk)
        labels = train_labels[index]
        for k in ks:
            scores = class_scores(sims[:, :k], labels[:, :k], num_classes, temperature)
            voted = (labels[:, :k] == targets.view(-1, 1)).any(dim=1)
            for n, count in topn_hits(scores, targets, voted=voted).items():
                hits[k][n] += count
    return KnnResult(hits, int(queries.shape[0]), num_classes)


def merge_results(results: List[KnnResult]) -> KnnResult:
    """Sum the hits of disjoint query shards (one per process) into one result."""
    first = results[0]
    hits = {k: {n: sum(r.hits[k][n] for r in results) for n in TOPN} for k in first.hits}
    return KnnResult(hits, sum(r.total for r in results), first.num_classes)
