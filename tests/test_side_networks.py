"""Side networks (METHOD.md §4–7, §9): IISAN, CROSSAN (+ MOMEF) and frozen-feature towers.

Small widths throughout (d_s = 16, r = 4, K = 3, d = 8) except the headline parameter counts, which
only build the modules.
"""

from __future__ import annotations

import copy
from math import comb

import pytest
import torch

from crossan.cache.features import TensorFeatures
from crossan.config import Config, TrainConfig, UserEncoderConfig
from crossan.towers.base import TowerContext, build_tower
from crossan.towers.crossan import CrossanTower
from crossan.towers.frozen import FrozenTower
from crossan.towers.iisan import IISANTower
from crossan.towers.momef import MOMEF
from crossan.towers.options import CrossanConfig, IISANConfig
from crossan.user_encoder import SASRec

MODS = ["text", "image", "video", "audio"]
N, K, DS, R, D = 12, 3, 16, 4, 8


def make_features(M: int, dims: list[int] | None = None, k: int = K, n: int = N, missing: dict | None = None,
                  seed: int = 0) -> TensorFeatures:
    """Random states [N+1, K, D_m]; ``missing``: modality → item rows that lack it (their states are 0)."""
    g = torch.Generator().manual_seed(seed)
    dims = dims or [DS] * M
    states, present = {}, {}
    for m, dm in zip(MODS[:M], dims):
        s = torch.randn(n + 1, k, dm, generator=g)
        p = torch.ones(n + 1, dtype=torch.bool)
        p[0] = False
        for i in (missing or {}).get(m, []):
            p[i] = False
        s[~p] = 0
        states[m], present[m] = s, p
    return TensorFeatures(states, present)


def small(cls, **kw):
    return cls(side_dim=DS, bottleneck=R, **kw)


def make_tower(method: str, M: int, feats: TensorFeatures, **kw):
    mods = MODS[:M]
    if method == "iisan":
        return IISANTower(feats, mods, N, D, small(IISANConfig, **kw))
    if method == "crossan":
        return CrossanTower(feats, mods, N, D, small(CrossanConfig, **kw))
    if method == "frozen":
        return FrozenTower(feats, mods, N, D)
    raise ValueError(method)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def expected_params(method: str, M: int, D_ms: list[int], d_s: int, r: int, K: int, d: int,
                    **opt) -> int:
    """Closed-form trainable parameter counts from METHOD.md §4–7, §9."""
    sanb = 2 * d_s * r + r + d_s
    proj = sum(Dm * d_s + d_s for Dm in D_ms if Dm != d_s)
    if method == "frozen":
        return sum(Dm * d + d for Dm in D_ms) + M * d * d + d
    if method == "iisan":
        head = d_s * d_s + d_s + d_s * d + d
        chain = K * sanb + K  # SANBs + one gate per depth
        if M == 1:
            inter_chains, inter = 0, 0
        elif opt.get("inter", "pairs") == "pairs":
            inter_chains = comb(M, 2)
            inter = inter_chains * chain
        else:
            inter_chains, inter = 1, K * sanb + K * M  # softmax gate logits per depth and modality
        chains = M + inter_chains
        return proj + M * chain + inter + chains * head + chains * d * d + d
    if method == "crossan":
        adapters = K * sanb * (1 if opt.get("share_adapters", False) else M)
        gates = K * M
        exchange = 0
        if opt.get("exchange", "softmax") == "softmax" and M >= 2:
            exchange = (K - 1) * M + ((K - 1) * M * (M - 1) if M >= 3 else 0)  # λ, b (depths 2..K)
        heads = M * (d_s * d + d)
        fusion = opt.get("fusion", "momef")
        if fusion == "momef":
            h = opt.get("momef_expert_mult", 1) * d
            fuse = (M * d * M + M if M >= 2 else 0) + M * (d * h + h + h * d + d)
        elif fusion == "concat":
            fuse = M * d * d + d
        else:
            fuse = 0
        return proj + adapters + gates + exchange + heads + fuse
    raise ValueError(method)


VARIANTS = [
    ("iisan", {}),
    ("iisan", {"inter": "single"}),
    ("crossan", {}),
    ("crossan", {"fusion": "concat"}),
    ("crossan", {"fusion": "mean"}),
    ("crossan", {"exchange": "none"}),
    ("crossan", {"share_adapters": True}),
    ("crossan", {"momef_top_k": 2, "momef_expert_mult": 2}),
    ("frozen", {}),
]
IDS = [m + "-" + ",".join(f"{k}={v}" for k, v in kw.items()) for m, kw in VARIANTS]


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize(("method", "kw"), VARIANTS, ids=IDS)
def test_output_shape_and_embed_all(method, kw, M):
    tower = make_tower(method, M, make_features(M), **kw)
    items = torch.tensor([3, 1, 7, 7, 12])
    out = tower(items)
    assert out.shape == (5, D) and out.dtype == torch.float32 and torch.isfinite(out).all()
    tower.eval()
    table = tower.embed_all(batch_size=5)
    assert table.shape == (N + 1, D) and (table[0] == 0).all()
    torch.testing.assert_close(table[items], tower(items))


# --------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize(("method", "kw"), VARIANTS, ids=IDS)
def test_gradients_reach_every_parameter(method, kw, M):
    torch.manual_seed(0)
    tower = make_tower(method, M, make_features(M, dims=[DS, 24, 10][:M]), **kw).train()
    out = tower(torch.arange(1, N + 1))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in tower.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------- counts
COUNT_CASES = [
    (method, kw, M, dims, ds, r, k, d)
    for method, kw in VARIANTS
    for M, dims, ds, r, k, d in [(1, [16], 16, 4, 3, 8), (2, [16, 24], 16, 4, 4, 8),
                                 (3, [20, 16, 12], 16, 8, 5, 6), (4, [16] * 4, 16, 4, 2, 8)]
]


@pytest.mark.parametrize(("method", "kw", "M", "dims", "ds", "r", "k", "d"), COUNT_CASES)
def test_parameter_counts_closed_form(method, kw, M, dims, ds, r, k, d):
    feats = make_features(M, dims=dims, k=k, n=2)
    mods = MODS[:M]
    if method == "iisan":
        tower = IISANTower(feats, mods, 2, d, IISANConfig(side_dim=ds, bottleneck=r, **kw))
    elif method == "crossan":
        tower = CrossanTower(feats, mods, 2, d, CrossanConfig(side_dim=ds, bottleneck=r, **kw))
    else:
        tower = FrozenTower(feats, mods, 2, d)
    assert n_params(tower) == expected_params(method, M, dims, ds, r, k, d, **kw)


def _headline(method: str) -> int:
    feats = make_features(2, dims=[768, 768], k=7, n=2)
    cls, cfg = (IISANTower, IISANConfig()) if method == "iisan" else (CrossanTower, CrossanConfig())
    tower = cls(feats, MODS[:2], 2, 64, cfg)  # d_s = 768, r = 64 are the config defaults
    assert n_params(tower) == expected_params(method, 2, [768, 768], 768, 64, 7, 64)
    return n_params(tower)


def test_headline_parameter_counts():
    """METHOD.md §6: IISAN ≈ 4.0M (4.1M with the user encoder), CROSSAN ≈ 1.5M (1.6M), ≥ 57% fewer."""
    user = n_params(SASRec(UserEncoderConfig(), max_len=10))  # d = 64, 2 blocks: ≈ 100k
    assert 95_000 < user < 105_000
    iisan, crossan = _headline("iisan"), _headline("crossan")
    assert abs(iisan - 4.0e6) / 4.0e6 < 0.02  # measured 4,013,653
    assert abs(iisan + user - 4.1e6) / 4.1e6 < 0.02
    assert abs(crossan - 1.5e6) / 1.5e6 < 0.02  # measured 1,503,260
    assert abs(crossan + user - 1.6e6) / 1.6e6 < 0.02
    assert 1 - (crossan + user) / (iisan + user) > 0.57


# --------------------------------------------------------------------------------------------- optimiser
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize(("method", "kw"), VARIANTS, ids=IDS)
def test_param_groups_cover_every_parameter_once(method, kw, M):
    tower = make_tower(method, M, make_features(M, dims=[DS, 24, 10][:M]), **kw)
    train = TrainConfig(lr=2e-4, lr_adapter=1e-4)
    groups = tower.param_groups(train)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in tower.parameters() if p.requires_grad}
    assert all(g["params"] and g["lr"] in (train.lr, train.lr_adapter) for g in groups)
    torch.optim.Adam(groups)
    by_name = {g["name"]: g for g in groups}
    if method != "frozen":
        side = {id(p) for p in by_name["side"]["params"]}
        assert by_name["side"]["lr"] == train.lr_adapter
        assert all(id(p) in side for mod in tower.side_modules() for p in mod.parameters())
        assert all(id(p) not in side for p in tower.heads.parameters())


# --------------------------------------------------------------------------------------------- missing
def _perturb_missing(feats: TensorFeatures, m: str, rows: list[int]) -> TensorFeatures:
    other = copy.deepcopy(feats)
    other._states[m][rows] = 100 * torch.randn(len(rows), *other._states[m].shape[1:])
    return other


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize(("method", "kw"), VARIANTS, ids=IDS)
def test_missing_modality_states_do_not_affect_output(method, kw, M):
    missing = {"image": [2, 5], "text": [5, 7]}
    feats = make_features(M, missing=missing)
    tower = make_tower(method, M, feats, **kw).eval()
    items = torch.arange(1, N + 1)
    ref = tower(items)
    for m, rows in missing.items():
        object.__setattr__(tower, "features", _perturb_missing(feats, m, rows))
        torch.testing.assert_close(tower(items), ref, rtol=0, atol=0)


@pytest.mark.parametrize("inter", ["pairs", "single"])
def test_iisan_missing_modality_chains(inter):
    """The intra chain of a missing modality outputs zeros; an item lacking it ignores that chain's weights."""
    feats = make_features(3, missing={"image": [4]})
    tower = make_tower("iisan", 3, feats, inter=inter).eval()
    items = torch.tensor([4, 6])
    out, valid = tower.chain_outputs(feats.gather(items))
    assert out.shape == (2, len(tower.chain_names), D)
    assert not valid[0, 1] and valid[0].sum() == len(tower.chain_names) - 1 and valid[1].all()
    assert (out[0, 1] == 0).all()
    ref = tower(items)
    with torch.no_grad():  # perturb everything of the image intra chain (chain 1 in every grouped module)
        for mod in [*tower.adapters, *tower.heads]:
            for p in mod.parameters():
                p[1].add_(torch.randn_like(p[1]))
        tower.gate.logit[:, 1].add_(1.0)
    new = tower(items)
    torch.testing.assert_close(new[0], ref[0], rtol=0, atol=0)
    assert not torch.allclose(new[1], ref[1])


def test_iisan_pair_with_missing_side_reads_present_side():
    feats = make_features(2, missing={"image": [3]})
    tower = make_tower("iisan", 2, feats).eval()
    # item 3 lacks image: the (text, image) chain reads text on both sides
    full = feats.gather(torch.tensor([3]))
    text_twice = {"text": full["text"], "image": (full["text"][0], torch.tensor([True]))}
    out, _ = tower.chain_outputs(full)
    ref, _ = tower.chain_outputs(text_twice)
    torch.testing.assert_close(out[:, 2], ref[:, 2])


def test_crossan_missing_chain_does_not_leak_into_exchange():
    feats = make_features(3, missing={"image": [4]})
    tower = make_tower("crossan", 3, feats).eval()
    with torch.no_grad():
        tower.exchange.logits.normal_()
    items = torch.tensor([4, 6])
    e_ref, present = tower.modality_embeddings(feats.gather(items))
    assert present.tolist() == [[True, False, True], [True, True, True]]
    assert (e_ref[0, 1] == 0).all()
    with torch.no_grad():  # change what the image chain computes (from any input)
        for block in tower.adapters:
            block.up_bias[1].add_(1.0)  # group 1 = image
    e_new, _ = tower.modality_embeddings(feats.gather(items))
    torch.testing.assert_close(e_new[0], e_ref[0], rtol=0, atol=0)  # item lacking image: unaffected
    assert not torch.allclose(e_new[1, 0], e_ref[1, 0])  # item with image: text chain reads it


def iisan_reference(tower: IISANTower, feats) -> tuple[torch.Tensor, torch.Tensor]:
    """METHOD.md §5 written out chain by chain with plain SANBs (the tower batches the chains)."""
    states, present = tower.side_inputs(feats)
    M, K = len(tower.modalities), tower.num_taps
    h = [tower.proj(m, s) for m, s in zip(tower.modalities, states)]
    g = tower.gate()
    outs, valid = [], []

    def head(c: int, x: torch.Tensor) -> torch.Tensor:
        for lin in tower.heads:
            x = x @ lin.weight[c] + lin.bias[c, 0]
        return x

    for m in range(M):  # intra chains
        s = torch.zeros_like(h[m][:, 0])
        for k in range(K):
            s = tower.adapters[k].block(m)(g[k, m] * h[m][:, k] + (1 - g[k, m]) * s)
        outs.append(head(m, s))
        valid.append(present[:, m])
    for p, (i, j) in enumerate(tower.pairs):  # pair chains
        hi = torch.where(present[:, i, None, None], h[i], h[j])
        hj = torch.where(present[:, j, None, None], h[j], h[i])
        t = torch.zeros_like(h[i][:, 0])
        for k in range(K):
            gk = g[k, M + p]
            t = tower.adapters[k].block(M + p)(t + gk * hi[:, k] + (1 - gk) * hj[:, k])
        outs.append(head(M + p, t))
        valid.append(present[:, i] | present[:, j])
    if tower.inter is not None:  # single inter chain
        t = torch.zeros_like(h[0][:, 0])
        for k in range(K):
            a = tower.inter.logits[k] / tower.inter.temperature
            inp = torch.zeros_like(t)
            for u in range(len(t)):
                ok = present[u].nonzero()[:, 0]
                if len(ok):
                    w = torch.softmax(a[ok], 0)
                    inp[u] = sum(wi * h[n][u, k] for wi, n in zip(w, ok.tolist()))
            t = tower.adapters[k].block(M)(t + inp)
        outs.append(head(M, t))
        valid.append(present.any(1))
    out, val = torch.stack(outs, 1), torch.stack(valid, 1)
    return torch.where(val[..., None], out, torch.zeros_like(out)), val


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("inter", ["pairs", "single"])
def test_iisan_batched_chains_equal_per_chain_reference(M, inter):
    torch.manual_seed(2)
    feats = make_features(M, missing={"image": [2, 5], "video": [5, 7], "audio": [2, 5]})
    tower = make_tower("iisan", M, feats, inter=inter).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(0.3 * torch.randn_like(p))
    items = torch.arange(1, N + 1)
    out, valid = tower.chain_outputs(feats.gather(items))
    ref, ref_valid = iisan_reference(tower, feats.gather(items))
    assert torch.equal(valid, ref_valid)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def crossan_reference(tower: CrossanTower, feats) -> torch.Tensor:
    """METHOD.md §6 written out one modality at a time with plain SANBs (the tower batches the chains)."""
    states, present = tower.side_inputs(feats)
    mods, K = tower.modalities, tower.num_taps
    M = len(mods)
    h = [tower.proj(m, s) for m, s in zip(mods, states)]
    g = tower.gate()
    s = [torch.zeros_like(h[0][:, 0]) for _ in mods]
    for k in range(K):
        blocks = tower.adapters[k]
        new = []
        for m in range(M):
            z = g[k, m] * h[m][:, k] + (1 - g[k, m]) * s[m]
            if tower.exchange is not None and k > 0:
                partners = [n for n in range(M) if n != m]
                b = (tower.exchange.logits[k - 1, m] if tower.exchange.logits is not None
                     else torch.zeros(M - 1))
                lam = tower.exchange.mix()[k - 1, m]
                for u in range(len(z)):
                    ok = [i for i, n in enumerate(partners) if present[u, n]]
                    if ok:
                        pi = torch.softmax(b[ok], 0)
                        z[u] = z[u] + lam * sum(p * s[partners[i]][u] for p, i in zip(pi, ok))
            new.append(blocks.block(m if blocks.groups > 1 else 0)(z))
        s = new
    W, bias = tower.heads.weight, tower.heads.bias
    e = torch.stack([s[m] @ W[m] + bias[m, 0] for m in range(M)], 1)
    return torch.where(present[..., None], e, torch.zeros_like(e))


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("kw", [{}, {"share_adapters": True}, {"exchange": "none"}], ids=["default", "shared", "none"])
def test_crossan_batched_chains_equal_per_modality_reference(M, kw):
    """The tower runs all chains at once (grouped SANBs, the exchange as a matmul); it must compute exactly
    METHOD.md §6's per-modality loop, including the softmax renormalised over present partners."""
    torch.manual_seed(1)
    feats = make_features(M, missing={"image": [2, 5], "video": [5, 7], "audio": [2, 5]})
    tower = make_tower("crossan", M, feats, **kw).eval()
    with torch.no_grad():
        for p in tower.parameters():  # move every parameter off its init (gates, logits, zero biases)
            p.add_(0.3 * torch.randn_like(p))
    items = torch.arange(1, N + 1)
    e, _ = tower.modality_embeddings(feats.gather(items))
    torch.testing.assert_close(e, crossan_reference(tower, feats.gather(items)), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- MOMEF
def test_momef_missing_modality_gets_zero_weight_and_all_missing_is_finite():
    torch.manual_seed(0)
    momef = MOMEF(MODS[:3], D)
    e = torch.randn(4, 3, D)
    present = torch.tensor([[True, False, True], [False, False, True], [True, True, True], [False] * 3])
    out = momef(e, present)
    p = momef.last_weights
    assert torch.isfinite(out).all()
    assert (p[:3][~present[:3]] == 0).all()
    torch.testing.assert_close(p[1], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(p[3], torch.full((3,), 1 / 3))  # nothing present: uniform fallback
    torch.testing.assert_close(p.sum(1), torch.ones(4))


@pytest.mark.parametrize(("M", "k"), [(4, 1), (4, 2), (4, 3), (3, 2)])
def test_momef_top_k_keeps_exactly_k(M, k):
    torch.manual_seed(0)
    momef = MOMEF(MODS[:M], D, top_k=k)
    e = torch.randn(20, M, D, requires_grad=True)
    out = momef(e, torch.ones(20, M, dtype=torch.bool))
    p = momef.last_weights
    assert ((p > 0).sum(1) == k).all()
    torch.testing.assert_close(p.sum(1), torch.ones(20))
    out.sum().backward()
    assert momef.router.weight.grad.abs().sum() > 0 or k == 1  # k = 1: weight ≡ 1, router gets no grad


@pytest.mark.parametrize("k", [1, 2])
def test_momef_balance_loss_reads_the_weights_before_top_k(k):
    """Switch form: P is the mean of the full softmax, so with k = 1 (kept weight ≡ 1) the router still
    learns through the balance loss; f counts each item 1/k' on each of its k' kept experts."""
    torch.manual_seed(0)
    momef = MOMEF(MODS[:4], D, top_k=k, load_balance_weight=1.0)
    e = torch.randn(30, 4, D)
    present = torch.ones(30, 4, dtype=torch.bool)
    present[:5, 1:] = False  # five items with text only: one kept expert whatever k is
    present[5] = False  # one item with nothing: uniform weights, left out of the balance loss
    momef(e, present)
    logits = momef.router(e.flatten(1)) / momef.temperature
    p_all = torch.softmax(logits.masked_fill(~present, float("-inf")), 1)[present.any(1)]
    kept = (momef.last_weights[present.any(1)] > 0).float()
    f = (kept / kept.sum(1, keepdim=True)).mean(0)
    assert momef.aux_loss().item() == pytest.approx(4 * float((f * p_all.mean(0)).sum().detach()), rel=1e-5)
    torch.testing.assert_close(momef.last_weights[5], torch.full((4,), 0.25))  # not cut to the first k
    momef.aux_loss().backward()
    assert momef.router.weight.grad.abs().sum() > 1e-3


@pytest.mark.parametrize(("M", "k"), [(2, 2), (4, 4), (3, 5)])
def test_momef_top_k_of_every_expert_balances_as_dense(M, k):
    """top_k >= M keeps every expert, so routing is dense; its balance loss was computed with f = 1/M for all
    experts, a constant 1 without gradient (the audit: router gradient 6e-8 instead of 1.18 at M = 2)."""
    torch.manual_seed(0)
    e = torch.randn(40, M, D)
    present = torch.ones(40, M, dtype=torch.bool)
    dense, capped = (MOMEF(MODS[:M], D, top_k=t, load_balance_weight=1.0) for t in (0, k))
    capped.load_state_dict(dense.state_dict())
    for m in (dense, capped):
        with torch.no_grad():
            m.router.bias.copy_(torch.linspace(-2.0, 2.0, M))  # concentrated routing: the loss is above 1
        m(e, present)
    torch.testing.assert_close(capped.last_weights, dense.last_weights)
    assert capped.aux_loss().item() == pytest.approx(dense.aux_loss().item(), rel=1e-6)
    assert dense.aux_loss().item() > 1.1
    capped.aux_loss().backward()
    assert capped.router.weight.grad.abs().sum() > 1e-2


def test_momef_load_balance_loss():
    torch.manual_seed(0)
    feats = make_features(3)
    off = make_tower("crossan", 3, feats)
    off(torch.arange(1, N + 1))
    assert CrossanConfig().load_balance_weight == 0 and off.aux_loss() is None
    on = make_tower("crossan", 3, feats, load_balance_weight=0.5)
    on(torch.arange(1, N + 1))
    aux = on.aux_loss()
    assert aux is not None and aux.ndim == 0
    # known value: weight · M · Σ_m (share of items routed mostly to m) · (mean router weight of m)
    p = on.fusion.last_weights
    share = torch.nn.functional.one_hot(p.argmax(1), 3).float().mean(0)
    assert aux.item() == pytest.approx(0.5 * 3 * float((share * p.mean(0)).sum()), rel=1e-5)
    aux.backward()
    assert on.fusion.router.weight.grad.abs().sum() > 0
    with torch.no_grad():
        on(torch.arange(1, N + 1))
    assert on.aux_loss() is None  # no loss from evaluation forwards


def test_momef_router_stats():
    feats = make_features(2, missing={"image": [1, 2, 3]})
    tower = make_tower("crossan", 2, feats).eval()
    tower(torch.tensor([1, 2]))
    tower.reset_stats()
    table = tower.embed_all(batch_size=5)
    assert table.shape == (N + 1, D)
    stats = tower.stats()
    w = stats["router_weight"]
    assert set(w) == {"text", "image"} and stats["router_items"] == N
    assert abs(sum(w.values()) - 1) < 1e-5
    p = tower.fusion.last_weights
    assert p.shape == (N % 5 or 5, 2)
    assert stats["router_weight_when_present"]["image"] == pytest.approx(w["image"] * N / (N - 3), rel=1e-5)


# --------------------------------------------------------------------------------------------- ablations
def test_exchange_none_makes_chains_independent():
    feats = make_features(3)
    items = torch.arange(1, N + 1)
    for exchange, independent in [("none", True), ("softmax", False)]:
        tower = make_tower("crossan", 3, feats, exchange=exchange).eval()
        assert (tower.exchange is None) == independent
        e_ref, _ = tower.modality_embeddings(feats.gather(items))
        other = feats.gather(items)
        other["image"] = (other["image"][0] + torch.randn_like(other["image"][0]), other["image"][1])
        e_new, _ = tower.modality_embeddings(other)
        assert torch.equal(e_new[:, 0], e_ref[:, 0]) == independent  # text chain vs image states
        assert not torch.allclose(e_new[:, 1], e_ref[:, 1])
    assert n_params(make_tower("crossan", 3, feats, exchange="none")) < n_params(make_tower("crossan", 3, feats))


def test_share_adapters_count_independent_of_m():
    counts = []
    for M in (1, 2, 3, 4):
        tower = make_tower("crossan", M, make_features(M), share_adapters=True)
        assert all(isinstance(b, torch.nn.Module) and not isinstance(b, torch.nn.ModuleDict)
                   for b in tower.adapters)
        counts.append(n_params(tower.adapters))
    assert len(set(counts)) == 1 and counts[0] == K * (2 * DS * R + R + DS)
    separate = [n_params(make_tower("crossan", M, make_features(M)).adapters) for M in (1, 2, 3)]
    assert separate == [M * counts[0] for M in (1, 2, 3)]


def test_fusion_variants():
    feats = make_features(3, missing={"video": [2]})
    items = torch.tensor([1, 2])
    concat = make_tower("crossan", 3, feats, fusion="concat").eval()
    assert isinstance(concat.fusion.proj, torch.nn.Linear) and concat.fusion.proj.in_features == 3 * D
    mean = make_tower("crossan", 3, feats, fusion="mean").eval()
    assert n_params(mean.fusion) == 0
    e, present = mean.modality_embeddings(feats.gather(items))
    torch.testing.assert_close(mean(items), torch.stack([e[0].mean(0), e[1, :2].mean(0)]))
    assert concat.stats() == {} and mean.aux_loss() is None


def test_iisan_inter_variants():
    feats = make_features(4)
    pairs = make_tower("iisan", 4, feats)
    single = make_tower("iisan", 4, feats, inter="single")
    solo = make_tower("iisan", 1, make_features(1))
    assert len(pairs.chain_names) == 4 + 6 and len(single.chain_names) == 4 + 1
    assert solo.inter is None and solo.chain_names == ["text"]
    assert single.inter.logits.shape == (K, 4)


def test_a_modality_whose_read_states_are_all_zeroed_is_refused():
    """A random Whisper's pooled last state (after its final LayerNorm) hardly varies over the items: the 5%
    rule zeroed every dimension, and frozen features (and the end-to-end heads) trained and ranked on
    nothing from audio without a word (HR@20 = 0). The frozen head reads the last tap only and is refused,
    naming the modality and the key; CROSSAN, which reads the earlier taps too, keeps them."""
    from crossan.errors import ConfigError

    feats = make_features(2)
    text = feats._states["text"]  # the tensor the source reads
    text[1:, -1] = 3.0 + 1e-3 * torch.randn(N, DS, generator=torch.Generator().manual_seed(1))  # flat last tap
    with pytest.raises(ConfigError, match=r"text: standardisation keeps no dimension of the last-layer states: "
                                          r"in every dimension they vary over the items by less than 0.05 of "
                                          r"their RMS .*standardize_min_rel_std=0"):
        make_tower("frozen", 2, feats).standardize_inputs()
    tower = make_tower("crossan", 2, feats).standardize_inputs()
    assert not tower.input_inv_std_text[-1].any() and tower.input_inv_std_text[:-1].all()
    make_tower("frozen", 2, feats).standardize_inputs(min_rel_std=0.0)  # the way out the message names
    text[1:, -1] = 3.0  # identical for every item: nothing to keep even then
    with pytest.raises(ConfigError, match="they are the same for every item"):
        make_tower("frozen", 2, feats).standardize_inputs(min_rel_std=0.0)


def test_frozen_reads_the_standardised_last_tap():
    """Frozen features (METHOD.md §9): GELU(Linear(last tap)) per modality, zeros where missing, Linear(concat)."""
    feats = make_features(2, dims=[DS, 24], missing={"image": [2]})
    tower = make_tower("frozen", 2, feats).standardize_inputs().eval()
    items = torch.tensor([1, 2, 3])
    got = tower(items)
    parts = []
    for m in ["text", "image"]:
        s, p = feats.gather(items)[m]
        x = (s[:, -1] - getattr(tower, f"input_mean_{m}")[-1]) * getattr(tower, f"input_inv_std_{m}")[-1]
        part = torch.nn.functional.gelu(tower.head.proj[m][0](x))
        parts.append(torch.where(p[:, None], part, torch.zeros_like(part)))
    torch.testing.assert_close(got, tower.head.fusion(torch.cat(parts, 1)), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("method", ["iisan", "crossan", "frozen"])
def test_builders_read_features_from_context(method):
    feats = make_features(2, dims=[DS, 24])
    cfg = Config(method=method, modalities=["text", "image"])
    cfg.iisan.side_dim = cfg.crossan.side_dim = DS
    cfg.user.dim = D
    ctx = TowerContext(cfg, N, [""] + [f"i{i}" for i in range(N)], extras={"features": feats})
    tower = build_tower(ctx)
    assert tower(torch.tensor([1, 2, 3])).shape == (3, D)
    assert "features" not in dict(tower.named_children())
    with pytest.raises(ValueError, match="FeatureSource"):
        build_tower(TowerContext(cfg, N, ctx.item_ids))


# --------------------------------------------------------------------------------------------- branch dropout
def test_keep_mask_rate_independence_and_seeding():
    """The CPU dropout mask: 0/1 entries, kept at rate 1 − p (p rounded to 2^-16), no correlation between
    neighbouring entries (they share a 64-bit random word), replayed by the seed."""
    from crossan.towers.sanb import dropout_rate, keep_mask

    n = 1 << 20
    for p in (0.1, 0.5, 0.9):
        torch.manual_seed(0)
        mask = keep_mask((n,), p)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(mask.mean().item() - (1 - dropout_rate(p))) < 6 * sd
        centred = mask - mask.mean()
        for lag in (1, 2, 3, 4):  # lags 1-3 read other bits of the same word; 4 the next word
            corr = (centred[:-lag] * centred[lag:]).mean() / centred.var()
            assert abs(corr.item()) < 6 / n ** 0.5
    assert abs(dropout_rate(0.1) - 0.1) < 2 ** -16 and dropout_rate(0.25) == 0.25
    torch.manual_seed(3)
    a = keep_mask((4, 5, 6), 0.3, torch.bfloat16)
    torch.manual_seed(3)
    b = keep_mask((4, 5, 6), 0.3, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.shape == (4, 5, 6) and torch.equal(a, b)
    assert not torch.equal(a, keep_mask((4, 5, 6), 0.3, torch.bfloat16))


def test_grouped_sanb_dropout_acts_on_the_branch_only():
    """Training mode: x + mask ⊙ branch / (1 − p) with the mask of :func:`keep_mask`, element-wise;
    evaluation: x + branch; and the mean over many draws is the evaluation output."""
    from crossan.towers.sanb import GroupedSANB, dropout_rate, keep_mask

    torch.manual_seed(0)
    block = GroupedSANB(3, DS, R, dropout=0.1)
    with torch.no_grad():
        block.up_bias.add_(1.0)  # a branch far from zero
    x = torch.randn(3, 50, DS)
    branch = block.eval()(x) - x
    block.train()
    torch.manual_seed(7)
    got = block(x)
    torch.manual_seed(7)
    q = dropout_rate(0.1)
    mask = keep_mask(x.shape, q)
    torch.testing.assert_close(got, x + mask * branch / (1 - q))
    assert 0.85 < mask.mean() < 0.95
    mean = torch.stack([block(x) for _ in range(400)]).mean(0)
    assert (mean - (x + branch)).abs().mean() < 0.05 * branch.abs().mean()


def test_gates_and_the_router_divide_their_logits_by_the_temperature() -> None:
    """Mutation testing (2026-12-02): multiplying by τ instead of dividing went unnoticed, since gates start
    at logit 0 (0.5 either way) and every test used MOMEF's default temperature 1. At τ = 0.1 the two differ
    by a factor of 100 in how fast a gate moves."""
    import math

    from crossan.towers.sanb import Gate

    gate = Gate(temperature=0.1)
    with torch.no_grad():
        gate.logit.fill_(0.1)
    assert float(gate().detach()) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)
    momef = MOMEF(["a", "b"], dim=2, temperature=0.5)
    with torch.no_grad():
        momef.router.weight.zero_()
        momef.router.bias.copy_(torch.tensor([1.0, 0.0]))
    weights = momef.routing(torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(weights, torch.tensor([[1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))]]))


@pytest.mark.parametrize("method", ["iisan", "crossan"])
def test_side_network_init_std_zero_is_refused(method: str) -> None:
    """``init_std=0`` was accepted: both SANB projections started at zero, and with ReLU(0) = 0 only ``up.bias``
    ever got a gradient (as ``adapter.init_std=0``), while every weight counted as trainable."""
    from crossan.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=rf"{method}.init_std: must be greater than 0"):
        load_config([], [f"method={method}", f"{method}.init_std=0"])
    assert load_config([], [f"method={method}", f"{method}.init_std=1e-4"]).__dict__[method].init_std == 1e-4
