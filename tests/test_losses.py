"""Losses against slow, obvious references (Python loops), float64 gradcheck, factory behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rescom.losses import (
    SHARED_LOSS_KWARGS,
    ClassBalancedSupConLoss,
    ResComLoss,
    class_balanced_supcon,
    create_loss,
    effective_number_weights,
    list_losses,
    log_prior,
)

RTOL, ATOL = 1e-6, 1e-9  # float64 comparisons
COUNTS = [40, 20, 10, 5, 2]
CRITERIA = [name for name in list_losses() if name != "cb_supcon"]  # cb_supcon is a component
KWARGS = {
    "class_counts": COUNTS,
    "dim": 6,
    "queue_size": 3,
    "num_positives": 2,
    "num_negatives": 5,
    "temperature": 0.2,
    "con_weight": 0.5,
    "beta": 0.999999,
}


# --------------------------------------------------------------------------------------------- references


def ref_weights(counts, beta):
    if beta == 0:
        return [1.0] * len(counts)
    eff = [(1 - beta**n) / (1 - beta) for n in counts]
    mean = sum(eff) / len(eff)
    return [mean / e for e in eff]


def ref_ce(logits, labels, log_pi=None):
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        s = [v + (log_pi[c] if log_pi is not None else 0.0) for c, v in enumerate(row)]
        total += -math.log(math.exp(s[y]) / sum(math.exp(v) for v in s))
    return total / len(labels)


def ref_supcon(z, labels, tau, weights, pos_sim=None, pos_valid=None, neg_sim=None, neg_valid=None):
    """Loop over anchors: contrast set = other batch samples + valid mined keys; positives = same class + hard pos."""
    m, y = z.shape[0], labels.tolist()
    total = 0.0
    for i in range(m):
        cands = [(float(z[i] @ z[j]), y[i] == y[j]) for j in range(m) if j != i]
        if pos_sim is not None:
            cands += [(float(s), True) for s, ok in zip(pos_sim[i], pos_valid[i], strict=True) if ok]
        if neg_sim is not None:
            cands += [(float(s), False) for s, ok in zip(neg_sim[i], neg_valid[i], strict=True) if ok]
        positives = [s for s, is_pos in cands if is_pos]
        if not positives:
            continue  # contributes 0, still counted in the mean
        denom = sum(math.exp(s / tau) for s, _ in cands)
        loss_i = -sum(math.log(math.exp(s / tau) / denom) for s in positives) / len(positives)
        total += (1.0 if weights is None else weights[y[i]]) * loss_i
    return total / m


def ref_mine(sim, labels, key_labels, filled, qp, qn):
    """Brute-force mining: [M, Q] values and validity, padded with (0, False)."""
    m = sim.shape[0]
    pv, pm = torch.zeros(m, qp, dtype=sim.dtype), torch.zeros(m, qp, dtype=torch.bool)
    nv, nm = torch.zeros(m, qn, dtype=sim.dtype), torch.zeros(m, qn, dtype=torch.bool)
    for i in range(m):
        same = sorted(
            float(sim[i, j]) for j in range(sim.shape[1]) if key_labels[j] == labels[i] and filled[j]
        )
        other = sorted(
            (float(sim[i, j]) for j in range(sim.shape[1]) if key_labels[j] != labels[i] and filled[j]),
            reverse=True,
        )
        for q, s in enumerate(same[:qp]):
            pv[i, q], pm[i, q] = s, True
        for q, s in enumerate(other[:qn]):
            nv[i, q], nm[i, q] = s, True
    return pv, pm, nv, nm


def ref_rescom(crit, logits, z, labels):
    kw = KWARGS
    log_pi = [math.log(n / sum(COUNTS)) for n in COUNTS]
    loss_cls = ref_ce(logits, labels, log_pi)
    keys = crit.queue.keys_flat().double()
    key_labels = [j // kw["queue_size"] for j in range(keys.shape[0])]
    sim = z @ keys.T
    pv, pm, nv, nm = ref_mine(
        sim,
        labels.tolist(),
        key_labels,
        crit.queue.filled_flat().tolist(),
        kw["num_positives"],
        kw["num_negatives"],
    )
    loss_con = ref_supcon(z, labels, kw["temperature"], ref_weights(COUNTS, kw["beta"]), pv, pm, nv, nm)
    return loss_cls + kw["con_weight"] * loss_con, loss_cls, loss_con


def siamese_batch(b=6, c=5, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (b,), generator=g)
    labels = torch.cat([y, y])  # [2b]
    logits = torch.randn(2 * b, c, generator=g, dtype=dtype)
    z = F.normalize(torch.randn(2 * b, d, generator=g, dtype=dtype), dim=1)
    return logits, z, labels


def partly_filled_rescom(seed=0):
    crit = create_loss("rescom", **KWARGS).double()
    g = torch.Generator().manual_seed(100 + seed)
    # classes 0-2 get some keys, class 0 more than K; classes 3-4 stay random (unfilled)
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    crit.queue.enqueue(F.normalize(torch.randn(7, 6, generator=g, dtype=torch.float64), dim=1), y)
    return crit


# ---------------------------------------------------------------------------------------------- helpers


def test_effective_number_weights_match_formula():
    for beta in (0.0, 0.9, 0.999, 0.999999):
        w = effective_number_weights(COUNTS, beta)
        assert w.dtype == torch.float32 and w.shape == (5,)
        torch.testing.assert_close(
            w.double(), torch.tensor(ref_weights(COUNTS, beta), dtype=torch.float64), rtol=1e-5, atol=0
        )


def test_effective_number_weights_near_one_is_inverse_frequency():
    counts = [500, 50, 5]
    w = effective_number_weights(counts, 0.999999)
    inv = torch.tensor([185.0 / n for n in counts])
    torch.testing.assert_close(w, inv, rtol=1e-3, atol=0)
    assert float(w[-1] / w[0]) == pytest.approx(100.0, rel=1e-3)


@pytest.mark.parametrize("beta", [-0.1, 1.0, 1.5, "0.9"])
def test_effective_number_weights_reject_bad_beta(beta):
    with pytest.raises(ValueError, match=r"0 <= beta < 1"):
        effective_number_weights(COUNTS, beta)


def test_effective_number_weights_reject_empty_class():
    with pytest.raises(ValueError, match="at least one training sample"):
        effective_number_weights([3, 0, 1], 0.99)


def test_log_prior():
    torch.testing.assert_close(
        log_prior(COUNTS).double(),
        torch.tensor([math.log(n / 77) for n in COUNTS], dtype=torch.float64),
        rtol=1e-6,
        atol=1e-6,
    )
    assert float(log_prior([1, 0])[1]) == pytest.approx(math.log(1e-9))
    for bad in ([], [[1, 2]], [1, -1], [0, 0], [1, float("nan")]):
        with pytest.raises(ValueError, match="class_counts"):
            log_prior(bad)


# ---------------------------------------------------------------------------------------- supcon


def mined_inputs(m, qp=2, qn=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(m, qp, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(m, qn, generator=g, dtype=torch.float64) * 2 - 1
    pos_valid = torch.rand(m, qp, generator=g) < 0.6
    neg_valid = torch.rand(m, qn, generator=g) < 0.7
    return pos, pos_valid, neg, neg_valid


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("m", [1, 2, 7, 12])
def test_supcon_matches_loop_reference(seed, m):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(m, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (m,), generator=g)
    w = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    mined = mined_inputs(m, seed=seed)
    got = class_balanced_supcon(z, labels, 0.2, w, *mined)
    want = ref_supcon(z, labels, 0.2, w.tolist(), *mined)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=RTOL, atol=ATOL)
    # batch only (no queue), unweighted
    got = class_balanced_supcon(z, labels, 0.1)
    torch.testing.assert_close(
        got, torch.tensor(ref_supcon(z, labels, 0.1, None), dtype=torch.float64), rtol=RTOL, atol=ATOL
    )


def test_supcon_anchors_without_positives_contribute_zero():
    z = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_(True)
    loss = class_balanced_supcon(z, torch.tensor([0, 1, 2]), 0.2)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all()
    single = z[:1].detach().requires_grad_(True)  # empty contrast set: no NaN in value or gradient
    loss = class_balanced_supcon(single, torch.tensor([0]), 0.2)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(single.grad).all()


def test_supcon_ignores_values_in_invalid_mined_columns():
    z, labels = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1), torch.tensor([0, 0, 1, 1, 2, 2])
    pos, pos_valid, neg, neg_valid = mined_inputs(6)
    a = class_balanced_supcon(z, labels, 0.2, None, pos, pos_valid, neg, neg_valid)
    b = class_balanced_supcon(
        z,
        labels,
        0.2,
        None,
        pos.masked_fill(~pos_valid, 1e6),
        pos_valid,
        neg.masked_fill(~neg_valid, 1e6),
        neg_valid,
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_supcon_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 2, 1])
    raw = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    pos, pos_valid, neg, neg_valid = mined_inputs(5)
    pos.requires_grad_(True)
    neg.requires_grad_(True)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)

    def fn(raw, pos, neg):
        return class_balanced_supcon(F.normalize(raw, dim=1), labels, 0.2, w, pos, pos_valid, neg, neg_valid)

    assert torch.autograd.gradcheck(fn, (raw, pos, neg), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_supcon_module_equals_functional():
    module = create_loss("cb_supcon", class_counts=COUNTS, temperature=0.3, beta=0.999, dim=8).double()
    assert isinstance(module, ClassBalancedSupConLoss)
    z, labels = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1), torch.tensor([0, 4, 4, 1, 0, 2])
    want = class_balanced_supcon(z, labels, 0.3, effective_number_weights(COUNTS, 0.999).double())
    torch.testing.assert_close(module(z, labels), want, rtol=RTOL, atol=ATOL)


def test_supcon_argument_errors():
    z, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="temperature"):
        class_balanced_supcon(z, labels, 0.0)
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        class_balanced_supcon(z, labels[:3], 0.1)
    with pytest.raises(ValueError, match=r"pos_sim must have shape \[4, Q\]"):
        class_balanced_supcon(z, labels, 0.1, pos_sim=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="neg_valid must be a bool"):
        class_balanced_supcon(z, labels, 0.1, neg_sim=torch.zeros(4, 2), neg_valid=torch.ones(4, 2))


# -------------------------------------------------------------------------- training criteria (registry)


def make_criterion(name):
    return partly_filled_rescom() if name == "rescom" else create_loss(name, **KWARGS).double()


def test_registry_lists_the_training_criteria():
    assert set(CRITERIA) == {"rescom", "balanced_softmax", "ce"}


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize("seed", range(3))
def test_criterion_matches_loop_reference(name, seed):
    crit = make_criterion(name).eval()
    logits, z, labels = siamese_batch(seed=seed)
    out = crit({"logits": logits, "embedding": z}, labels)
    assert set(out) == {"loss", "loss_cls", "loss_con"} and all(v.dim() == 0 for v in out.values())
    if name == "rescom":
        want = ref_rescom(crit, logits, z, labels)
    else:
        log_pi = [math.log(n / sum(COUNTS)) for n in COUNTS] if name == "balanced_softmax" else None
        cls = ref_ce(logits, labels, log_pi)
        want = (cls, cls, 0.0)
    for key, value in zip(("loss", "loss_cls", "loss_con"), want, strict=True):
        torch.testing.assert_close(
            out[key],
            torch.tensor(value, dtype=torch.float64),
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, key=key: f"{name} {key}: {m}",
        )


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_gradcheck_float64(name):
    crit = make_criterion(name).eval()
    logits, z, labels = siamese_batch(b=3, seed=1)
    logits.requires_grad_(True)
    raw = z.clone().requires_grad_(True)

    def fn(logits, raw):
        return crit({"logits": logits, "embedding": F.normalize(raw, dim=1)}, labels)["loss"]

    assert torch.autograd.gradcheck(fn, (logits, raw), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", CRITERIA)
def test_criterion_invariant_to_permuting_pairs(name):
    crit = make_criterion(name).eval()
    logits, z, labels = siamese_batch(b=5, seed=2)
    perm = torch.randperm(5)
    rows = torch.cat([perm, perm + 5])  # same permutation in both views keeps view 1 first
    a = crit({"logits": logits, "embedding": z}, labels)
    b = crit({"logits": logits[rows], "embedding": z[rows]}, labels[rows])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


def test_one_kwargs_dict_builds_every_criterion():
    for name in CRITERIA:
        crit = create_loss(name, **KWARGS)
        out = crit(
            dict(zip(("logits", "embedding"), siamese_batch(dtype=torch.float32)[:2], strict=True)),
            siamese_batch()[2],
        )
        assert float(out["loss"]) > 0
        if name != "rescom":
            assert float(out["loss_con"]) == 0.0 and out["loss_con"].dim() == 0


def test_none_kwargs_mean_default():
    crit = create_loss(
        "rescom",
        class_counts=COUNTS,
        dim=6,
        queue_size=None,
        num_positives=None,
        num_negatives=5,
        temperature=None,
        con_weight=None,
        beta=None,
    )
    assert (crit.queue_size, crit.num_positives, crit.temperature, crit.con_weight, crit.beta) == (
        10,
        1,
        0.2,
        0.5,
        0.999999,
    )


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown loss 'focal'.*balanced_softmax, cb_supcon, ce, rescom"):
        create_loss("focal")
    with pytest.raises(TypeError, match="tempreature"):
        create_loss("rescom", class_counts=COUNTS, dim=4, tempreature=0.1)
    assert "temperature" in SHARED_LOSS_KWARGS


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"num_positives": 4}, r"num_positives Qp must be an int in \[0, queue_size K=3\]"),
        ({"num_negatives": 13}, r"num_negatives Qn must be an int in \[0, K·\(C−1\) = 3·4 = 12\]"),
        ({"temperature": 0.0}, "temperature"),
        ({"con_weight": -1.0}, "con_weight"),
        ({"queue_size": 0}, "queue_size must be a positive int"),
        ({"class_counts": [3, 0, 2]}, "at least one training sample"),
        ({"class_counts": [3]}, "at least 2 classes"),
        ({"beta": 1.0}, "beta"),
    ],
)
def test_rescom_rejects_bad_hyper_parameters(override, match):
    with pytest.raises(ValueError, match=match):
        ResComLoss(**{**KWARGS, **override})


def test_rescom_rejects_bad_shapes():
    crit = ResComLoss(**KWARGS)
    logits, z, labels = siamese_batch(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"shape \[2b\]"):
        crit({"logits": logits[:3], "embedding": z[:3]}, labels[:3])
    with pytest.raises(ValueError, match=r"outputs\['embedding'\] must have shape \[12, 6\]"):
        crit({"logits": logits, "embedding": z[:, :4]}, labels)
    with pytest.raises(ValueError, match="mapping"):
        crit(logits, labels)


def test_rescom_enqueues_view_one_after_building_the_loss():
    crit = partly_filled_rescom()
    logits, z, labels = siamese_batch(seed=4)
    before = {k: v.clone() for k, v in crit.queue.state_dict().items()}
    crit.eval()
    evaluated = crit({"logits": logits, "embedding": z}, labels)
    for k, v in crit.queue.state_dict().items():
        assert torch.equal(v, before[k]), "eval mode must not touch the queue"
    crit.train()
    trained = crit({"logits": logits, "embedding": z}, labels)
    torch.testing.assert_close(
        trained["loss"], evaluated["loss"], rtol=0, atol=0
    )  # loss built before enqueue
    ref = ResComLoss(**KWARGS).double()
    ref.queue.load_state_dict(before)
    ref.queue.enqueue(z[:6], labels[:6])
    for k, v in crit.queue.state_dict().items():
        assert torch.equal(v, ref.queue.state_dict()[k]), k
    # the backward still works although the queue buffer changed in place
    z2 = z.clone().requires_grad_(True)
    crit({"logits": logits, "embedding": z2}, labels)["loss"].backward()
    assert torch.isfinite(z2.grad).all()


def test_rescom_state_dict_round_trip():
    crit = partly_filled_rescom()
    state = crit.state_dict()
    assert {"log_prior", "class_weight", "queue.keys", "queue.ptr", "queue.filled"} <= set(state)
    fresh = ResComLoss(**KWARGS).double()
    fresh.load_state_dict(state)
    logits, z, labels = siamese_batch(seed=5)
    a = crit.eval()({"logits": logits, "embedding": z}, labels)
    b = fresh.eval()({"logits": logits, "embedding": z}, labels)
    torch.testing.assert_close(a["loss"], b["loss"], rtol=0, atol=0)


def test_rescom_runs_in_float32_and_learns_from_empty_queue():
    torch.manual_seed(0)
    crit = ResComLoss(**KWARGS)
    logits, z, labels = siamese_batch(dtype=torch.float32)
    out = crit({"logits": logits, "embedding": z}, labels)  # nothing filled yet: batch-only contrast
    want = class_balanced_supcon(z, labels, 0.2, crit.class_weight)
    torch.testing.assert_close(out["loss_con"], want, rtol=1e-6, atol=1e-6)
    assert crit.queue.filled.any()


def test_rescom_mining_in_row_chunks_equals_one_chunk(monkeypatch):
    """Chunked mining (used at large C to bound the [rows, C*K] scratch) changes neither loss nor gradient."""
    import rescom.losses.rescom as rescom_module

    logits, z, labels = siamese_batch(b=7, seed=8)
    results = []
    for chunk in (10**9, 3 * KWARGS["queue_size"] * len(COUNTS)):  # one chunk, then 3 rows per chunk
        monkeypatch.setattr(rescom_module, "MINING_CHUNK_ELEMENTS", chunk)
        crit = partly_filled_rescom(seed=2).eval()
        zz = z.clone().requires_grad_(True)
        out = crit({"logits": logits, "embedding": zz}, labels)
        out["loss"].backward()
        results.append((out["loss"].detach(), zz.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
