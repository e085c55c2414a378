"""The in-batch softmax loss against a per-position loop, and its masking rules."""

from __future__ import annotations

import math

import pytest
import torch

from crossan.recommender import inbatch_softmax_loss, sample_negatives


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, L, d, N = 4, 5, 6, 12
    inputs = torch.randint(1, N + 1, (B, L), generator=g)
    targets = torch.randint(1, N + 1, (B, L), generator=g)
    inputs[0, :2] = 0  # left padding
    targets[0, :2] = 0
    states = torch.randn(B, L, d, generator=g)
    ids = torch.cat([inputs, targets], 1)
    uniq, inv = torch.unique(ids, return_inverse=True)
    emb = torch.randn(len(uniq), d, generator=g)
    emb[uniq == 0] = 0
    log_pop = torch.randn(len(uniq), generator=g)
    return states, emb, uniq, inv[:, :L], inv[:, L:], targets > 0, log_pop, inputs, targets


def reference_loss(states, emb, uniq, inputs, targets, log_pop) -> float:
    B, L, _ = states.shape
    total, n = 0.0, 0
    for b in range(B):
        own = set(inputs[b].tolist()) | set(targets[b].tolist())
        for t in range(L):
            tgt = int(targets[b, t])
            if tgt == 0:
                continue
            logits = {}
            for u, row in enumerate(uniq.tolist()):
                if row == 0 or (row in own and row != tgt):
                    continue
                logits[row] = float(states[b, t] @ emb[u]) - float(log_pop[u])
            lse = math.log(sum(math.exp(v) for v in logits.values()))
            total += lse - logits[tgt]
            n += 1
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inbatch_loss_matches_loop(seed: int) -> None:
    states, emb, uniq, iidx, tidx, valid, log_pop, inputs, targets = _case(seed)
    got = inbatch_softmax_loss(states, emb, uniq, iidx, tidx, valid, log_pop)
    assert float(got) == pytest.approx(reference_loss(states, emb, uniq, inputs, targets, log_pop), rel=1e-5)


def test_masked_candidates_do_not_matter() -> None:
    states, emb, uniq, iidx, tidx, valid, log_pop, inputs, targets = _case(3)
    base = inbatch_softmax_loss(states, emb, uniq, iidx, tidx, valid, log_pop)
    # change padding positions' states: they carry no loss
    s2 = states.clone()
    s2[0, :2] = 100.0
    assert float(inbatch_softmax_loss(s2, emb, uniq, iidx, tidx, valid, log_pop)) == pytest.approx(float(base))
    # an item user 0 has seen (and is not one of its targets) is masked out of user 0's candidates:
    # making it hugely attractive must not change user 0's loss
    own_inputs = set(inputs[0].tolist()) - set(targets[0].tolist()) - {0}
    assert own_inputs, "the fixed case has such an item"
    u = uniq.tolist().index(max(own_inputs))  # row 5 in this case: also a candidate for user 1
    keep = torch.zeros_like(valid)
    keep[0] = valid[0]
    a = inbatch_softmax_loss(states, emb, uniq, iidx, tidx, keep, log_pop)
    e2 = emb.clone()
    e2[u] = 50 * states[0].mean(0)
    assert float(inbatch_softmax_loss(states, e2, uniq, iidx, tidx, keep, log_pop)) == pytest.approx(float(a))
    # ... while the same change does move the loss of a user for whom it is a real candidate
    others = [b for b in range(1, 4) if int(uniq[u]) not in set(inputs[b].tolist()) | set(targets[b].tolist())]
    keep2 = torch.zeros_like(valid)
    keep2[others[0]] = valid[others[0]]
    a2 = inbatch_softmax_loss(states, emb, uniq, iidx, tidx, keep2, log_pop)
    e3 = emb.clone()
    e3[u] = 50 * states[others[0]].mean(0)
    b2 = inbatch_softmax_loss(states, e3, uniq, iidx, tidx, keep2, log_pop)
    # a negative made far more attractive than the target raises that user's loss, by about its logit gap
    assert float(b2) > float(a2) + 10  # measured 2.53 → 26.08


def _two_users(counts: list[float]) -> float:
    """User 0 (input item 1, target 2) against user 1's items 3 and 4 as negatives; all dot products 0, so
    the loss is log Σ_j exp(−log c_j) + log c_2 = log(c_2 · Σ_j 1/c_j) over the candidates j ∈ {2, 3, 4}."""
    inputs, targets = torch.tensor([[1], [3]]), torch.tensor([[2], [4]])
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    states, emb = torch.zeros(2, 1, 2), torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([[True], [False]])  # user 0's loss only
    log_pop = torch.log(torch.tensor(counts, dtype=torch.float))
    return float(inbatch_softmax_loss(states, emb, uniq, inv[:, :1], inv[:, 1:], valid, log_pop))


def test_popularity_correction_lowers_popular_logits() -> None:
    # known values: equal counts → log 3; popular negatives (count 10) count less → log(1 · (1 + 0.1 + 0.1));
    # a popular target is lowered itself → log(10 · (0.1 + 1 + 1))
    assert _two_users([1, 1, 1, 1]) == pytest.approx(math.log(3), rel=1e-6)
    assert _two_users([1, 1, 10, 10]) == pytest.approx(math.log(1.2), rel=1e-5)
    assert _two_users([1, 10, 1, 1]) == pytest.approx(math.log(21), rel=1e-6)
    # item 1 is user 0's own input: not a candidate, its count changes nothing
    assert _two_users([1000, 1, 10, 10]) == pytest.approx(math.log(1.2), rel=1e-5)


def test_item_rows_have_a_deterministic_gradient() -> None:
    """The rows a batch reads from its unique-item embeddings repeat (an item in several histories), and
    their gradients must sum in the same order at every run: indexing summed them with atomic adds on the
    CPU's threads and changed the last bits between runs of SASRec-ID (measured on the demo data, 2 threads)."""
    from crossan.recommender import rows

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(300, 64, generator=g)
    index = torch.randint(0, 300, (512, 10), generator=g)  # 5,120 reads of 300 rows
    upstream = torch.randn(512, 10, 64, generator=g)
    grads = []
    for _ in range(8):
        leaf = emb.clone().requires_grad_()
        out = rows(leaf, index)
        assert torch.equal(out, emb[index])
        out.backward(upstream)
        grads.append(leaf.grad)
    expected = torch.zeros_like(emb).index_add_(0, index.reshape(-1), upstream.reshape(-1, 64))
    torch.testing.assert_close(grads[0], expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


def test_bce_negatives_avoid_the_users_window_and_cover_the_rest() -> None:
    """With 12 items and windows of 4 inputs + 4 targets, a uniform draw hits an own item about half the time;
    after the redraws none does, and every other item is drawn at about the same rate."""
    torch.manual_seed(0)
    N, B, L = 12, 2000, 4
    inputs = torch.randint(1, N + 1, (B, L))
    inputs[:, 0] = 0  # left padding
    targets = torch.where(inputs > 0, torch.randint(1, N + 1, (B, L)), 0)
    neg = sample_negatives(inputs, targets, N)
    own = torch.cat([inputs, targets], 1)
    assert neg.shape == targets.shape and int(neg.min()) >= 1 and int(neg.max()) <= N
    assert not bool((neg[..., None] == own[:, None, :]).any(-1).any())
    # each row's allowed items are equally likely: the count of item j over rows where j is allowed
    allowed = torch.ones(B, N + 1, dtype=torch.bool).scatter_(1, own, False)[:, 1:]
    expect = (allowed.float() / allowed.sum(1, keepdim=True)).sum(0) * L
    got = torch.bincount(neg.flatten(), minlength=N + 1)[1:].float()
    assert torch.allclose(got, expect, rtol=0.1)


def test_bce_loss_leaves_out_padding_positions() -> None:
    """Mutation testing (2026-12-02): averaging the BCE loss over padding positions too went unnoticed. With
    the unique items 0..6 (row r is item r), the loss is the mean over the two real positions of
    softplus(-s·e_target) + softplus(s·e_negative)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from crossan.recommender import Recommender

    g = torch.Generator().manual_seed(0)
    inputs, targets, negatives = torch.tensor([[0, 1, 2]]), torch.tensor([[0, 2, 3]]), torch.tensor([[4, 5, 6]])
    uniq, inv = torch.unique(torch.cat([inputs, targets, negatives], 1), return_inverse=True)
    emb = torch.randn(len(uniq), 4, generator=g)
    emb[0] = 0
    states = torch.randn(1, 3, 4, generator=g)
    got = Recommender._loss(SimpleNamespace(loss_kind="bce"), states, emb, uniq, inv, inputs, targets)
    want = sum(F.softplus(-(states[0, t] @ emb[targets[0, t]])) + F.softplus(states[0, t] @ emb[negatives[0, t]])
               for t in (1, 2)) / 2
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_bce_negatives_avoid_the_users_window_even_where_redraws_run_out() -> None:
    """A second reader (2026-12-04): with 12 items and windows of 10 distinct items, 7.6% of the negatives
    were one of the user's own items after the 16 redraws (0.75% the position's own positive), though the
    docs said never. What the redraws leave is drawn from the items outside the window, uniformly."""
    from crossan.recommender import _draw_outside

    torch.manual_seed(0)
    N, B, L = 12, 3000, 5
    perm = torch.stack([torch.randperm(N) + 1 for _ in range(B)])
    inputs, targets = perm[:, :L], perm[:, 1:L + 1]  # 6 distinct items per window: half the catalogue
    neg = sample_negatives(inputs, targets, N, rounds=0)  # no redraw: every clash goes to the exact draw
    own = torch.cat([inputs, targets], 1)
    assert not bool((neg[..., None] == own[:, None, :]).any(-1).any())
    allowed = torch.ones(B, N + 1, dtype=torch.bool).scatter_(1, own, False)[:, 1:]
    expect = (allowed.float() / allowed.sum(1, keepdim=True)).sum(0) * L
    got = torch.bincount(neg.flatten(), minlength=N + 1)[1:].float()
    assert torch.allclose(got, expect, rtol=0.1)
    ten = torch.stack([torch.randperm(N)[:10] + 1 for _ in range(500)])  # the reader's case: 10 of 12 items
    neg = sample_negatives(ten[:, :5], ten[:, 5:], N)
    assert not bool((neg[..., None] == ten[:, None, :]).any(-1).any())
    # the exact draw itself: padding and repeats ignored; a row holding every item gets 0
    rows = torch.tensor([[0, 3, 3, 1, 2], [1, 2, 3, 4, 5]])
    draws = torch.stack([_draw_outside(rows, 5) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {4, 5} and set(draws[:, 1].tolist()) == {0}


def test_bce_negatives_are_items_even_where_no_item_is_left_to_draw() -> None:
    """Mutation testing (2026-12-04): drawing 0 (the padding row) first, or writing the exact draw's 0 ("no item
    left") over a window that holds every item, went unnoticed."""
    torch.manual_seed(1)
    N = 6
    full = torch.stack([torch.randperm(N) + 1 for _ in range(300)])  # every window holds all six items
    neg = sample_negatives(full[:, :3], full[:, 3:], N)
    assert int(neg.min()) >= 1 and int(neg.max()) <= N  # left as drawn: items, whatever they clash with
    some = torch.stack([torch.randperm(N)[:2] + 1 for _ in range(2000)])  # no padding, so 0 never clashes
    neg = sample_negatives(some[:, :1], some[:, 1:], N, rounds=0)
    assert int(neg.min()) >= 1
