"""CROSSAN ``exchange: inputs`` (METHOD.md §1, §6): each chain's input mixes all present modalities' tapped
states with per-depth softmax weights, plus ``(1 − g)·s`` of its own previous side state.

The batched tower (one matmul over the modality axis) is held against the equation written out one
modality and one item at a time, with missing modalities; the parameter count against its closed form.
"""

from __future__ import annotations

import pytest
import torch
from tests.test_side_networks import DS, MODS, D, K, N, R, expected_params, make_features, n_params

from crossan.towers.crossan import CrossanTower
from crossan.towers.options import CrossanConfig


def make(M: int, feats, **kw) -> CrossanTower:
    return CrossanTower(feats, MODS[:M], N, D, CrossanConfig(side_dim=DS, bottleneck=R, exchange="inputs", **kw))


def inputs_reference(tower: CrossanTower, feats) -> torch.Tensor:
    """z_t^k = Σ_{m present} softmax(a_{t,·}^k)_m · h_m^{l_k} + (1 − g_t^k) · s_t^{k−1}, per item and chain."""
    states, present = tower.side_inputs(feats)
    mods, Kt = tower.modalities, tower.num_taps
    M = len(mods)
    h = [tower.proj(m, s) for m, s in zip(mods, states)]
    s = [torch.zeros_like(h[0][:, 0]) for _ in mods]
    for k in range(Kt):
        new = []
        for t in range(M):
            z = torch.zeros_like(s[t])
            for u in range(len(z)):
                ok = [m for m in range(M) if present[u, m]]
                if not ok:
                    continue
                logits = tower.input_mix.logits[k, t, ok] if M >= 2 else torch.zeros(1)
                alpha = torch.softmax(logits, 0)
                z[u] = sum(al * h[m][u, k] for al, m in zip(alpha, ok))
            if k > 0:
                z = z + (1 - tower.gate()[k - 1, t]) * s[t]
            blocks = tower.adapters[k]
            new.append(blocks.block(t if blocks.groups > 1 else 0)(z))
        s = new
    W, bias = tower.heads.weight, tower.heads.bias
    e = torch.stack([s[m] @ W[m] + bias[m, 0] for m in range(M)], 1)
    return torch.where(present[..., None], e, torch.zeros_like(e))


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True], ids=["own", "shared"])
def test_inputs_exchange_equals_per_modality_reference(M, shared):
    torch.manual_seed(3)
    # item 5 lacks image, video and audio; item 2 lacks image and audio; item 7 lacks video
    feats = make_features(M, missing={"image": [2, 5], "video": [5, 7], "audio": [2, 5]})
    tower = make(M, feats, share_adapters=shared).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.3 * torch.randn_like(p))
    items = torch.arange(1, N + 1)
    e, _ = tower.modality_embeddings(feats.gather(items))
    torch.testing.assert_close(e, inputs_reference(tower, feats.gather(items)), rtol=1e-5, atol=1e-5)


def test_inputs_exchange_initial_weights_favour_own_modality():
    tower = make(3, make_features(3))
    a = tower.input_mix.logits.detach()
    assert torch.equal(torch.diagonal(a, dim1=1, dim2=2), torch.zeros(K, 3))
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.equal(a[:, off], torch.full((K, 6), -2.0))
    # with all three present the own weight is 1 / (1 + 2e^-2)
    w = torch.softmax(a[0, 0], 0)[0].item()
    assert w == pytest.approx(1 / (1 + 2 * torch.exp(torch.tensor(-2.0)).item()), rel=1e-6)


def test_inputs_exchange_mixes_modalities_where_none_does_not():
    """Changing image states moves the text chain's embedding under ``inputs`` (and not under ``none``)."""
    feats = make_features(2)
    other = make_features(2, seed=1)
    other._states["text"] = feats._states["text"].clone()  # only the image states differ
    items = torch.arange(1, N + 1)
    for exchange, moves in [("inputs", True), ("none", False)]:
        torch.manual_seed(0)
        tower = CrossanTower(feats, MODS[:2], N, D, CrossanConfig(side_dim=DS, bottleneck=R, exchange=exchange)).eval()
        e1, _ = tower.modality_embeddings(feats.gather(items))
        e2, _ = tower.modality_embeddings(other.gather(items))
        assert (not torch.equal(e1[:, 0], e2[:, 0])) == moves


@pytest.mark.parametrize("M", [1, 2, 4])
def test_inputs_exchange_parameter_count(M):
    """Against the softmax exchange's closed form: no λ/b, K·M·M mixing logits (M ≥ 2), K − 1 gates per chain."""
    tower = make(M, make_features(M))
    softmax_count = expected_params("crossan", M, [DS] * M, DS, R, K, D)
    exch = (K - 1) * M + ((K - 1) * M * (M - 1) if M >= 3 else 0) if M >= 2 else 0
    expect = softmax_count - exch - M + (K * M * M if M >= 2 else 0)
    assert n_params(tower) == expect


def test_inputs_exchange_gradients_reach_every_parameter():
    feats = make_features(3, missing={"image": [2]})
    tower = make(3, feats).train()
    tower(torch.arange(1, N + 1)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
