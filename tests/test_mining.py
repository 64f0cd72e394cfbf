"""Hard pair mining: exactly the hardest filled keys, compared with brute force; never unfilled keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rescom.mining import (
    attach_gradient,
    gather_similarity,
    hard_negatives,
    hard_positives,
    mine_class_major,
    mine_hard_pairs,
    queue_similarity,
    two_stage_topk,
    use_two_stage,
)


def brute_force(sim, labels, key_labels, filled, qp, qn):
    """Per anchor: sort the eligible keys in Python and take the first Q."""
    pos, neg = [], []
    for i in range(sim.shape[0]):
        same = [j for j in range(sim.shape[1]) if key_labels[j] == labels[i] and filled[j]]
        other = [j for j in range(sim.shape[1]) if key_labels[j] != labels[i] and filled[j]]
        pos.append(sorted(same, key=lambda j, i=i: float(sim[i, j]))[:qp])
        neg.append(sorted(other, key=lambda j, i=i: -float(sim[i, j]))[:qn])
    return pos, neg


def random_case(seed, c=6, k=4, d=5, b=9, fill=0.6):
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(c * k, d, generator=g), dim=1)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    labels = torch.randint(0, c, (b,), generator=g)
    filled = torch.rand(c * k, generator=g) < fill
    filled[: k // 2] = False  # class 0 has at most K/2 filled slots
    key_labels = torch.arange(c).repeat_interleave(k)
    return z, keys, labels, key_labels, filled, k


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("qp", "qn"), [(1, 5), (2, 1), (4, 20), (0, 0)])
def test_matches_brute_force(seed, qp, qn):
    z, keys, labels, key_labels, filled, k = random_case(seed)
    sim = queue_similarity(z, keys)
    pos, neg = mine_hard_pairs(sim, labels, key_labels, filled, k, qp, qn)
    assert pos.values.shape == pos.valid.shape == pos.index.shape == (z.shape[0], qp)
    assert neg.values.shape == neg.valid.shape == neg.index.shape == (z.shape[0], qn)
    ref_pos, ref_neg = brute_force(sim, labels, key_labels, filled, qp, qn)
    for i in range(z.shape[0]):
        for mined, ref in ((pos, ref_pos[i]), (neg, ref_neg[i])):
            n_valid = int(mined.valid[i].sum())
            assert n_valid == len(ref)
            assert mined.valid[i, :n_valid].all()  # valid picks come first (sorted by hardness)
            assert mined.index[i, :n_valid].tolist() == ref
            torch.testing.assert_close(mined.values[i, :n_valid], sim[i, ref], rtol=0, atol=0)
            assert (mined.values[i, n_valid:] == 0).all()


def test_never_picks_unfilled_or_wrong_class_keys():
    z, keys, labels, key_labels, filled, k = random_case(7, fill=0.3)
    sim = queue_similarity(z, keys)
    pos, neg = mine_hard_pairs(sim, labels, key_labels, filled, k, k, key_labels.numel())
    for mined, same_class in ((pos, True), (neg, False)):
        idx = mined.index[mined.valid]
        anchor = labels[:, None].expand_as(mined.index)[mined.valid]
        assert filled[idx].all()
        assert ((key_labels[idx] == anchor) == same_class).all()
    # every eligible key is picked when Q is large enough
    assert int(pos.valid.sum()) == sum(int((filled & (key_labels == y)).sum()) for y in labels)
    assert int(neg.valid.sum()) == sum(int((filled & (key_labels != y)).sum()) for y in labels)


def test_random_initial_keys_are_ignored_when_nothing_is_filled():
    z, keys, labels, key_labels, _, k = random_case(1)
    filled = torch.zeros(key_labels.numel(), dtype=torch.bool)
    pos, neg = mine_hard_pairs(queue_similarity(z, keys), labels, key_labels, filled, k, 2, 10)
    assert not pos.valid.any() and not neg.valid.any()
    assert (pos.values == 0).all() and (neg.values == 0).all()


def test_gradients_flow_to_anchors_only_through_valid_picks():
    z, keys, labels, key_labels, filled, k = random_case(2)
    z = z.double().requires_grad_(True)
    keys = keys.double().requires_grad_(True)
    pos, neg = mine_hard_pairs(queue_similarity(z, keys), labels, key_labels, filled, k, 2, 6)
    (pos.values.sum() + neg.values.sum()).backward()
    assert keys.grad is None  # keys are detached
    expected = torch.zeros_like(z)
    for mined in (pos, neg):
        for i in range(z.shape[0]):
            for j, ok in zip(mined.index[i].tolist(), mined.valid[i].tolist(), strict=True):
                if ok:
                    expected[i] += keys[j].detach()
    torch.testing.assert_close(z.grad, expected, rtol=1e-12, atol=1e-12)


def test_argument_errors():
    z, keys, labels, key_labels, filled, k = random_case(0)
    sim = queue_similarity(z, keys)
    with pytest.raises(ValueError, match="num_positives Qp must be in"):
        hard_positives(sim, labels, filled, k, k + 1)
    with pytest.raises(ValueError, match="num_negatives Qn must be in"):
        hard_negatives(sim, labels, key_labels, filled, sim.shape[1] + 1)
    with pytest.raises(ValueError, match="divide"):
        hard_positives(sim, labels, filled, 5, 1)
    with pytest.raises(ValueError, match="filled must be a bool"):
        hard_positives(sim, labels, filled.long(), k, 1)
    with pytest.raises(ValueError, match="share d"):
        queue_similarity(z, keys[:, :2])


def test_many_classes_picks_are_sorted_and_valid():
    """C=2000, K=8 (the official [C, K·(C−1)] int64 index would be 256 MB here; masking needs none)."""
    c, k, d, b = 2000, 8, 16, 32
    keys = F.normalize(torch.randn(c * k, d), dim=1)
    z = F.normalize(torch.randn(b, d), dim=1)
    labels = torch.randint(0, c, (b,))
    filled = torch.ones(c * k, dtype=torch.bool)
    sim = queue_similarity(z, keys)  # [32, 16000]
    pos, neg = mine_hard_pairs(sim, labels, torch.arange(c).repeat_interleave(k), filled, k, 1, 400)
    assert pos.valid.all() and neg.valid.all()
    assert (neg.values[:, :-1] >= neg.values[:, 1:]).all()
    own_max = torch.stack([sim[i, labels[i] * k : (labels[i] + 1) * k].max() for i in range(b)])
    assert (pos.values[:, 0] <= own_max).all()


@pytest.mark.parametrize("with_sim", [True, False])
def test_gather_similarity_equals_dense_gather_in_value_and_gradient(with_sim):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(30, 5, generator=g, dtype=torch.float64)
    index = torch.randint(0, 30, (7, 9), generator=g)
    weight = torch.randn(7, 9, generator=g, dtype=torch.float64)
    dense = (z @ keys.T).gather(1, index)
    (dense * weight).sum().backward()
    want = z.grad.clone()
    z.grad = None
    sim = (z @ keys.T).detach() if with_sim else None
    got = gather_similarity(z, keys, index, sim)
    torch.testing.assert_close(got, dense, rtol=1e-12, atol=1e-12)
    (got * weight).sum().backward()
    torch.testing.assert_close(z.grad, want, rtol=1e-12, atol=1e-12)


def test_gather_similarity_gradcheck_float64():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(10, 3, generator=g, dtype=torch.float64)
    index = torch.randint(0, 10, (4, 6), generator=g)  # repeated indices included
    assert torch.autograd.gradcheck(lambda z: gather_similarity(z, keys, index), (z,), eps=1e-6, atol=1e-8)


def test_gather_similarity_argument_errors():
    z, keys = torch.randn(4, 3), torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"index must have shape \[4, Q\]"):
        gather_similarity(z, keys, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"sim must have shape \[4, 10\]"):
        gather_similarity(z, keys, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 9))


# ------------------------------------------------------------------- fast class-major path used by the loss


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("qp", "qn", "fill"), [(1, 5, 0.6), (2, 1, 1.0), (4, 20, 0.4), (0, 0, 0.6), (3, 24, 1.0)]
)
def test_mine_class_major_matches_brute_force(seed, qp, qn, fill):
    z, keys, labels, key_labels, filled, k = random_case(seed, fill=fill)
    if fill == 1.0:
        filled[:] = True
    sim = queue_similarity(z, keys)
    pos, neg = mine_class_major(sim.clone(), labels, None if fill == 1.0 else filled, k, qp, qn)
    ref_pos, ref_neg = brute_force(sim, labels, key_labels, filled, qp, qn)
    for i in range(z.shape[0]):
        n_valid = int(pos.valid[i].sum())
        assert pos.index[i, :n_valid].tolist() == ref_pos[i]  # positives: least similar first
        assert pos.valid[i, :n_valid].all() and (pos.values[i, n_valid:] == 0).all()
        torch.testing.assert_close(pos.values[i, :n_valid], sim[i, ref_pos[i]], rtol=0, atol=0)
        # negatives come unordered: compare as sets, values exactly
        got = neg.index[i][neg.valid[i]].tolist()
        assert sorted(got) == sorted(ref_neg[i])
        torch.testing.assert_close(neg.values[i][neg.valid[i]], sim[i, got], rtol=0, atol=0)
        assert (neg.values[i][~neg.valid[i]] == 0).all()


def _plain_topk_values(score, k):
    return torch.topk(score, k, dim=1, sorted=True).values


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("c", "k_slots", "q"), [(50, 4, 10), (200, 8, 40), (31, 3, 7), (64, 2, 16)])
def test_two_stage_topk_is_exact(seed, c, k_slots, q):
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(9, c * k_slots, generator=g)
    score[score < -1.5] = float("-inf")  # skipped slots (own class, unfilled)
    top = two_stage_topk(score, k_slots, q)
    assert top.values.shape == top.indices.shape == (9, q)
    torch.testing.assert_close(top.values.sort(dim=1, descending=True).values, _plain_topk_values(score, q))
    assert torch.equal(score.gather(1, top.indices), top.values)  # the indices point at those values
    assert all(len(set(row)) == q for row in top.indices.tolist())  # no slot twice


@pytest.mark.parametrize("seed", range(6))
def test_two_stage_topk_is_exact_with_ties(seed):
    """Heavy ties (scores from 5 levels, duplicated keys, whole classes equal): same values as topk."""
    g = torch.Generator().manual_seed(seed)
    c, k_slots, q = 120, 4, 25
    score = torch.randint(0, 5, (7, c * k_slots), generator=g).float() / 4  # values in {0, .25, .5, .75, 1}
    score[:, :k_slots] = 1.0  # a class whose every slot ties with the best
    score[:, -3 * k_slots :] = float("-inf")  # classes with nothing to pick
    top = two_stage_topk(score, k_slots, q)
    assert torch.equal(top.values.sort(dim=1, descending=True).values, _plain_topk_values(score, q))
    assert torch.equal(score.gather(1, top.indices), top.values)
    assert all(len(set(row)) == q for row in top.indices.tolist())


def test_two_stage_is_chosen_only_when_it_reads_fewer_columns():
    assert use_two_stage(8142, 8, 2000)  # iNaturalist recipe
    assert not use_two_stage(100, 10, 400)  # CIFAR-100 recipe: Qn >= C, plain topk
    assert not use_two_stage(1000, 1, 10)  # K = 1: the class max is the slot itself


def test_mine_class_major_two_stage_equals_plain_path_at_scale():
    """C=2000, K=8, Qn=300: the two-stage negatives are the plain top-Qn (values and, without ties, slots)."""
    c, k, d, b = 2000, 8, 16, 24
    g = torch.Generator().manual_seed(3)
    keys = F.normalize(torch.randn(c * k, d, generator=g), dim=1)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    labels = torch.randint(0, c, (b,), generator=g)
    filled = torch.rand(c * k, generator=g) < 0.9
    sim = queue_similarity(z, keys)
    assert use_two_stage(c, k, 300)
    _, fast = mine_class_major(sim.clone(), labels, filled, k, 1, 300)
    _, ref = mine_hard_pairs(sim, labels, torch.arange(c).repeat_interleave(k), filled, k, 1, 300)
    assert fast.valid.all() and ref.valid.all()
    assert torch.equal(fast.index.sort(dim=1).values, ref.index.sort(dim=1).values)


def test_attach_gradient_equals_gather_similarity():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(20, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 20, (5, 7), generator=g)
    weight = torch.randn(5, 7, generator=g, dtype=torch.float64)
    sim = (z @ keys.T).detach()
    want = gather_similarity(z, keys, index, sim)
    (want * weight).sum().backward()
    want_grad, z.grad = z.grad.clone(), None
    got = attach_gradient(z, keys, index, sim.gather(1, index))
    assert torch.equal(got, want.detach())
    (got * weight).sum().backward()
    assert torch.equal(z.grad, want_grad)
