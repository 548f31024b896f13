"""The weighted k-NN vote (classification.knn) against hand computations and an explicit loop
written after DINO's eval_knn.py; chunked neighbour search against the whole matrix."""
import math

import pytest
import torch

from mae_transfer.classification.features import ShardSampler, extract_features, gather_rows
from mae_transfer.classification.knn import (class_scores, knn_classify, l2_normalise,
                                             merge_results, nearest_neighbours, ranked_classes,
                                             topn_hits)


def unit(*angles_deg):
    """2-D unit vectors at these angles (cosine similarity = cos of the angle between)."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], 1).float()


def test_temperature_weighting_by_hand():
    """One close neighbour of class 1 against two farther ones of class 0: at T=0.07 the close
    one wins (exp(0.9/T) > 2 exp(0.5/T)); at T=10 the weights are almost equal and the
    majority wins. Scores are the exp(sim/T) sums over the total."""
    sims = torch.tensor([[0.9, 0.5, 0.5]])
    labels = torch.tensor([[1, 0, 0]])
    w1, w0 = math.exp(0.9 / 0.07), 2 * math.exp(0.5 / 0.07)
    scores = class_scores(sims, labels, num_classes=3, temperature=0.07)
    assert scores[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1), 0.0], rel=1e-5)
    assert ranked_classes(scores)[0, 0] == 1
    w1, w0 = math.exp(0.9 / 10), 2 * math.exp(0.5 / 10)
    scores = class_scores(sims, labels, num_classes=3, temperature=10.0)
    assert scores[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1), 0.0], rel=1e-5)
    assert ranked_classes(scores)[0, 0] == 0


def test_small_temperature_does_not_overflow():
    """exp(1 / 0.005) overflows float32; the shifted weights keep the same ratios."""
    scores = class_scores(torch.tensor([[1.0, 0.99]]), torch.tensor([[0, 1]]), 2, 0.005)
    ratio = math.exp((0.99 - 1.0) / 0.005)
    assert torch.isfinite(scores).all()
    assert scores[0].tolist() == pytest.approx([1 / (1 + ratio), ratio / (1 + ratio)], rel=1e-4)


def test_ties_rank_the_lower_class_first_and_unvoted_classes_never_hit():
    # classes 2 and 0 get equal weight (same similarity): 0 ranks first
    scores = class_scores(torch.tensor([[0.8, 0.8]]), torch.tensor([[2, 0]]), 4, 0.07)
    assert scores[0].tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])
    assert ranked_classes(scores)[0].tolist() == [0, 2, 1, 3]
    assert topn_hits(scores, torch.tensor([0])) == {1: 1, 5: 1}
    assert topn_hits(scores, torch.tensor([2])) == {1: 0, 5: 1}
    # class 3 got no vote: not a top-5 hit although 4 classes all fit in a top 5
    assert topn_hits(scores, torch.tensor([3])) == {1: 0, 5: 0}
    # ... also when its weight is known to be zero only through `voted`
    assert topn_hits(scores, torch.tensor([2]), voted=torch.tensor([False])) == {1: 0, 5: 0}


def test_knn_classify_by_hand():
    """Train vectors at 0, 10, 20 degrees (class 0) and 90, 100 degrees (class 1); queries at
    5 and 85 degrees, both labelled 0. k=1: the nearest one's class. k=3, T=0.07, query at 85
    degrees: neighbours at 90, 100 (class 1, cos 5 and cos 15 degrees) and 20 (class 0, cos 65
    degrees): class 1."""
    train, train_labels = unit(0, 10, 20, 90, 100), torch.tensor([0, 0, 0, 1, 1])
    queries, query_labels = unit(5, 85), torch.tensor([0, 0])  # the second one is "wrong"
    result = knn_classify(train, train_labels, queries, query_labels, ks=(1, 3), temperature=0.07)
    assert result.total == 2 and result.num_classes == 2
    # k=1: the 85-degree query's one neighbour is of class 1, so class 0 got no vote at all
    assert result.hits == {1: {1: 1, 5: 1}, 3: {1: 1, 5: 2}}
    assert result.as_dict()["3"] == {"top1": 50.0, "top5": 100.0}
    sims, index = nearest_neighbours(queries[1:], train, 3)
    assert index[0].tolist() == [3, 4, 2]
    c = [math.cos(math.radians(d)) for d in (5, 15, 65)]
    assert sims[0].tolist() == pytest.approx(c, abs=1e-6)
    w = [math.exp(x / 0.07) for x in c]
    scores = class_scores(sims, train_labels[index], 2, 0.07)
    assert scores[0].tolist() == pytest.approx([w[2] / sum(w), (w[0] + w[1]) / sum(w)], rel=1e-5)


def dino_loop(train, train_labels, queries, k, T, num_classes):
    """Explicit per-query computation of DINO's rule: top-k by cosine similarity, class score
    = sum of exp(sim / T); returns the predicted class of each query (no ties in random data)."""
    preds = []
    for q in queries.double():
        sims = [(float(q @ t.double()), i) for i, t in enumerate(train)]
        sims.sort(key=lambda s: -s[0])
        score = [0.0] * num_classes
        for s, i in sims[:k]:
            score[int(train_labels[i])] += math.exp(s / T)
        preds.append(max(range(num_classes), key=lambda c: score[c]))
    return torch.tensor(preds)


def random_set(n_train=300, n_query=40, dim=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    train_labels = torch.randint(0, classes, (n_train,), generator=g)
    query_labels = torch.randint(0, classes, (n_query,), generator=g)
    train = l2_normalise(centres[train_labels] + 1.5 * torch.randn(n_train, dim, generator=g))
    queries = l2_normalise(centres[query_labels] + 1.5 * torch.randn(n_query, dim, generator=g))
    return train, train_labels, queries, query_labels


def test_vote_equals_an_explicit_loop():
    train, train_labels, queries, query_labels = random_set()
    for k, T in ((1, 0.07), (20, 0.07), (20, 0.5), (50, 0.02)):
        expected = dino_loop(train, train_labels, queries, k, T, 4)
        sims, index = nearest_neighbours(queries, train, k)
        scores = class_scores(sims, train_labels[index], 4, T)
        assert torch.equal(ranked_classes(scores)[:, 0], expected), (k, T)
        result = knn_classify(train, train_labels, queries, query_labels, (k,), T)
        assert result.hits[k][1] == int((expected == query_labels).sum())


def test_chunked_equals_unchunked():
    train, train_labels, queries, query_labels = random_set(n_train=301, n_query=61, seed=1)
    sims, index = nearest_neighbours(queries, train, 25, train_chunk=10**6)
    full = queries @ train.T  # the whole matrix, sorted
    ref_sims, ref_index = full.sort(dim=1, descending=True)
    assert torch.equal(index, ref_index[:, :25])
    for chunk in (5, 25, 100):
        s, i = nearest_neighbours(queries, train, 25, train_chunk=chunk)
        assert torch.equal(i, index), chunk
        assert torch.allclose(s, sims, atol=1e-6)
    whole = knn_classify(train, train_labels, queries, query_labels, (5, 20), 0.07,
                         query_chunk=10**6, train_chunk=10**6)
    chunked = knn_classify(train, train_labels, queries, query_labels, (5, 20), 0.07,
                           query_chunk=6, train_chunk=33)
    assert chunked.hits == whole.hits and chunked.total == whole.total == 61
    # query shards scored apart (one per process) and summed: the same hits
    halves = [knn_classify(train, train_labels, queries[s::2], query_labels[s::2], (5, 20),
                           0.07, num_classes=4) for s in (0, 1)]
    assert merge_results(halves).hits == whole.hits


def test_bad_arguments_are_refused():
    train, train_labels, queries, query_labels = random_set(n_train=10, n_query=3)
    with pytest.raises(ValueError, match="k=11 neighbours asked of 10"):
        knn_classify(train, train_labels, queries, query_labels, (11,))
    with pytest.raises(ValueError, match="train labels must lie in 0..1"):
        knn_classify(train, train_labels, queries, query_labels, (3,), num_classes=2)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(train, train_labels, queries, query_labels, (3,), temperature=0.0)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_extract_features_matches_a_direct_forward():
    from mae_transfer.classification.encoder import build_encoder

    torch.manual_seed(0)
    vit = build_encoder("vit_mini_patch16", 32).eval()
    images, labels = torch.randn(7, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    with torch.no_grad():
        tokens = vit.forward_features(images)
    for pool, direct in (("cls", tokens[:, 0]), ("mean", tokens[:, 1:].mean(1))):
        feats, got_labels, index = extract_features(vit, _Pairs(images, labels),
                                                    torch.device("cpu"), batch_size=3, pool=pool)
        assert torch.allclose(feats, l2_normalise(direct), atol=1e-5)
        assert torch.allclose(feats.norm(dim=1), torch.ones(7))
        assert torch.equal(got_labels, labels) and torch.equal(index, torch.arange(7))


def test_shards_cover_every_item_once_and_gather_restores_the_order():
    shards = [ShardSampler(10, r, 3).indices for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10)) and shards[0] == [0, 3, 6, 9]
    rows = torch.arange(10.0).view(-1, 1) * 2
    index = torch.tensor(shards[0] + shards[1] + shards[2])
    assert torch.equal(gather_rows(rows[index], index, 10), rows)  # one process: a scatter


def test_bf16_autocast_path_gives_fp32_unit_features_close_to_fp32():
    """The path a GPU run takes (bf16 autocast), run on the CPU: features come back float32,
    unit length, and within bf16 rounding of the fp32 ones."""
    from mae_transfer.classification.encoder import build_encoder

    torch.manual_seed(0)
    vit = build_encoder("vit_mini_patch16", 32).eval()
    images, labels = torch.randn(6, 3, 32, 32), torch.zeros(6, dtype=torch.long)
    data = _Pairs(images, labels)
    fp32, _, _ = extract_features(vit, data, torch.device("cpu"), batch_size=6)
    bf16, _, _ = extract_features(vit, data, torch.device("cpu"), batch_size=6,
                                  amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32 and torch.allclose(bf16.norm(dim=1), torch.ones(6))
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16
    assert (bf16 * fp32).sum(dim=1).min() > 0.99  # cosine similarity to the fp32 features
