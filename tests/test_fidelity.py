"""Switches that reproduce IISAN's official code (issue 17; configs/iisan_official.yaml, docs/method.md).

Each switch is held against an independent computation of what the official code does (a per-user,
per-position loop; the official SASRec block's equations; Adam's first step), and against crossan's default,
so that a switch that silently did nothing would fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.test_side_networks import DS, MODS, D, N, R, make_features

from conftest import load_benchmark
from crossan.config import ConfigError, UserEncoderConfig, load_config
from crossan.dropout import Dropout
from crossan.model import param_groups
from crossan.recommender import log_popularity, slots_softmax_loss
from crossan.towers.chainsplit import SplitGate, SplitGroupedLinear
from crossan.towers.iisan import IISANTower
from crossan.towers.options import IISANConfig
from crossan.user_encoder import SASRec

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- user encoder
def official_sasrec_reference(enc: SASRec, emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """IISAN's official SASRec forward (eval mode) written out: separate Q/K/V products without bias, an
    additive -1e9 mask over later and padding keys, ReLU feed-forward, post-LayerNorm with eps 1e-6."""
    B, L, d = emb.shape
    x = F.layer_norm(emb + enc.pos.weight[:L], (d,), enc.ln.weight, enc.ln.bias, 1e-6)
    allowed = torch.tril((items > 0)[:, None, :].expand(B, L, L))
    add = torch.where(allowed, 0.0, -1e9)[:, None]
    for blk in enc.blocks:
        H = blk.n_heads
        Wq, Wk, Wv = blk.qkv.weight.chunk(3, 0)
        q, k, v = ((x @ W.T).view(B, L, H, d // H).transpose(1, 2) for W in (Wq, Wk, Wv))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // H) + add, -1)
        a = (att @ v).transpose(1, 2).reshape(B, L, d) @ blk.proj.weight.T
        x = F.layer_norm(x + a, (d,), blk.ln1.weight, blk.ln1.bias, 1e-6)
        w1, w2 = blk.ffn[0], blk.ffn[3]
        f = F.linear(torch.relu(F.linear(x, w1.weight, w1.bias)), w2.weight, w2.bias)
        x = F.layer_norm(x + f, (d,), blk.ln2.weight, blk.ln2.bias, 1e-6)
    return x


def test_official_user_encoder_matches_reference_at_real_positions():
    torch.manual_seed(0)
    enc = SASRec(UserEncoderConfig(dim=16, n_heads=2, variant="iisan_official"), max_len=6).eval()
    with torch.no_grad():  # LayerNorm affine off its init so that it matters
        for blk in enc.blocks:
            for ln in (blk.ln1, blk.ln2):
                ln.weight.add_(0.2 * torch.randn_like(ln.weight))
                ln.bias.add_(0.2 * torch.randn_like(ln.bias))
    items = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    emb = torch.randn(3, 6, 16)
    got = enc(emb, items)
    ref = official_sasrec_reference(enc, emb, items)
    real = items > 0
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)


def test_user_encoder_variants_differ_in_structure():
    off = SASRec(UserEncoderConfig(variant="iisan_official"), max_len=10)
    ours = SASRec(UserEncoderConfig(), max_len=10)
    b_off, b_ours = off.blocks[0], ours.blocks[0]
    assert b_off.qkv.bias is None and b_off.proj.bias is None
    assert b_ours.qkv.bias is not None and b_ours.proj.bias is not None
    assert b_off.ln1.eps == 1e-6 and ours.blocks[0].ln1.eps == 1e-5 and off.ln.eps == 1e-6
    assert [type(m) for m in b_off.ffn] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Identity, torch.nn.Linear]
    assert [type(m) for m in b_ours.ffn] == [torch.nn.Linear, torch.nn.GELU, Dropout, torch.nn.Linear]
    # Xavier-normal: std sqrt(2 / (fan_in + fan_out)); crossan: 0.02
    w = off.blocks[0].ffn[0].weight  # 64 -> 256
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / (64 + 256)), rel=0.05)
    assert float(ours.blocks[0].ffn[0].weight.detach().std()) == pytest.approx(0.02, rel=0.05)


def test_official_user_encoder_keeps_padding_positions_but_not_their_influence():
    torch.manual_seed(1)
    items = torch.tensor([[0, 0, 3, 4]])
    emb = torch.randn(1, 4, 64)
    for variant, zero_pad in [("crossan", True), ("iisan_official", False)]:
        enc = SASRec(UserEncoderConfig(variant=variant), max_len=4).eval()
        out = enc(emb, items)
        emb2 = emb.clone()
        emb2[0, :2] = 100 * torch.randn(2, 64)
        torch.testing.assert_close(enc(emb2, items)[0, 2:], out[0, 2:])  # real positions never see padding
        # crossan zeroes padding positions (zero biases at init keep them zero); the official keeps them
        assert bool((out[0, :2] == 0).all()) == zero_pad


# --------------------------------------------------------------------------------------------- loss
def _windows(seed: int):
    """Left-padded windows as the protocol builds them: targets = inputs shifted by one (0 where input is 0)."""
    g = torch.Generator().manual_seed(seed)
    B, L, Nn, d = 4, 5, 9, 6  # few items: repeats within and across users
    seq = torch.randint(1, Nn + 1, (B, L + 1), generator=g)
    seq[0, :3] = 0
    seq[2, :1] = 0
    inputs = seq[:, :L]
    targets = torch.where(inputs > 0, seq[:, 1:], 0)
    return inputs, targets, torch.randn(B, L, d, generator=g), torch.randn(Nn + 1, d, generator=g), g


def official_slots_loss(states, table, log_pop_rows, inputs, targets) -> float:
    """The official loss as a loop: candidates are all B·(L+1) slots; for user b, a slot is masked when its
    item is padding or any item of b's window, except b's own target slot for that position."""
    B, L = inputs.shape
    slots = torch.cat([inputs, targets[:, -1:]], 1)
    flat = slots.reshape(-1).tolist()
    total, n = 0.0, 0
    for b in range(B):
        own = set(slots[b].tolist())
        for j in range(L):
            if targets[b, j] == 0:
                continue
            tgt_col = b * (L + 1) + j + 1
            assert flat[tgt_col] == int(targets[b, j])
            logits = []
            for c, item in enumerate(flat):
                if item == 0 or (item in own and c != tgt_col):
                    continue
                val = float(states[b, j] @ table[item]) - float(log_pop_rows[item])
                logits.append(val)
                if c == tgt_col:
                    tgt_val = val
            total += math.log(sum(math.exp(v) for v in logits)) - tgt_val
            n += 1
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slots_loss_matches_official_loop(seed):
    inputs, targets, states, table, g = _windows(seed)
    log_pop_rows = torch.randn(len(table), generator=g)
    L = inputs.shape[1]
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)
    got = slots_softmax_loss(states, table[uniq], uniq, slots, targets > 0, log_pop_rows[uniq])
    assert float(got) == pytest.approx(official_slots_loss(states, table, log_pop_rows, inputs, targets), rel=1e-5)


def test_slots_and_unique_losses_differ_when_items_repeat_across_users():
    from crossan.recommender import inbatch_softmax_loss

    inputs, targets, states, table, g = _windows(0)
    L = inputs.shape[1]
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    lp = torch.zeros(len(uniq))
    slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)
    a = slots_softmax_loss(states, table[uniq], uniq, slots, targets > 0, lp)
    b = inbatch_softmax_loss(states, table[uniq], uniq, inv[:, :L], inv[:, L:], targets > 0, lp)
    assert abs(float(a) - float(b)) > 1e-3


def test_log_popularity_smoothing():
    counts = torch.tensor([0, 3, 1, 0, 6])
    add_one = log_popularity(counts, 1.0)
    torch.testing.assert_close(add_one, torch.log(torch.tensor([1, 4, 2, 1, 7]) / 15.0))
    raw = log_popularity(counts, 0.0)
    torch.testing.assert_close(raw, torch.tensor([0.0, math.log(3 / 10), math.log(1 / 10), 0.0, math.log(6 / 10)]))


def test_pop_smoothing_negative_is_a_config_error():
    with pytest.raises(ConfigError, match="train.pop_smoothing"):
        load_config([], ["train.pop_smoothing=-1"])


# --------------------------------------------------------------------------------------------- IISAN switches
def _iisan(feats, M=2, **kw) -> IISANTower:
    return IISANTower(feats, MODS[:M], N, D, IISANConfig(side_dim=DS, bottleneck=R, **kw))


@pytest.mark.parametrize("M", [2, 3])
def test_official_lr_groups_split_chains_without_changing_the_numbers(M):
    feats = make_features(M)
    torch.manual_seed(0)
    ours = _iisan(feats, M).eval()
    torch.manual_seed(0)
    off = _iisan(feats, M, lr_groups="official").eval()
    assert isinstance(off.heads[0], SplitGroupedLinear) and isinstance(off.gate, SplitGate)
    items = torch.arange(1, N + 1)
    torch.testing.assert_close(off(items), ours(items), rtol=0, atol=0)
    # every trainable parameter in exactly one group (model.param_groups checks that, we check the counts)
    n = sum(p.numel() for g in off.param_groups(load_config().train) for p in g["params"])
    assert n == sum(p.numel() for p in off.parameters())


def test_official_lr_groups_give_each_module_its_official_rate():
    """Adam's first step moves every entry by lr (|m / sqrt(v)| = 1), so the step size reads the rate back."""
    cfg = load_config([], ["train.lr=2e-4", "train.lr_adapter=1e-4"])
    feats = make_features(2)
    tower = _iisan(feats, 2, lr_groups="official").train()
    groups = tower.param_groups(cfg.train)
    opt = torch.optim.Adam(groups, eps=1e-30)
    with torch.no_grad():  # gates off 0 so that every gate logit gets a gradient
        for c in tower.gate.columns:
            c.add_(0.05 * torch.randn_like(c))
    before = {id(p): p.detach().clone() for p in tower.parameters()}
    tower(torch.arange(1, N + 1)).square().sum().backward()
    opt.step()

    def step(p):
        return float((p.detach() - before[id(p)]).abs().max())

    text, image, inter = 0, 1, 2  # chains: intra text, intra image, inter text_image
    h0, gate = tower.heads[0], tower.gate
    expect = {
        step(h0.weights[text]): 5e-5, step(h0.weights[image]): 1e-4, step(h0.weights[inter]): 2e-4,
        step(gate.columns[text]): 2e-4, step(gate.columns[image]): 1e-4, step(gate.columns[inter]): 2e-4,
        step(tower.adapters[0].down_weight): 1e-4, step(tower.heads[1].weight): 2e-4,
        step(tower.fusion.weight): 2e-4,
    }
    for got, lr in expect.items():
        assert got == pytest.approx(lr, rel=1e-3)
    # crossan's grouping: heads at train.lr, gates at train.lr_adapter
    names = {g["name"]: g["lr"] for g in _iisan(feats, 2).param_groups(cfg.train)}
    assert names == {"side": 1e-4, "heads": 2e-4}


def test_missing_zeros_runs_zero_states_through_the_chains():
    """``missing: zeros``: an item lacking its image embeds as if its image states were zeros and present;
    crossan's rule (zeroed chain output, pair reads text twice) gives another embedding."""
    feats = make_features(2, missing={"image": [3]})
    as_zero = make_features(2)
    as_zero._states["image"][3] = 0
    items = torch.arange(1, N + 1)
    torch.manual_seed(0)
    off = _iisan(feats, 2, missing="zeros").eval()
    torch.manual_seed(0)
    ref = _iisan(as_zero, 2, missing="zeros").eval()
    torch.testing.assert_close(off(items), ref(items), rtol=0, atol=0)
    torch.manual_seed(0)
    ours = _iisan(feats, 2).eval()
    assert not torch.allclose(ours(items)[2], off(items)[2])
    torch.testing.assert_close(ours(items)[[0, 1, 3]], off(items)[[0, 1, 3]], rtol=0, atol=0)


def test_image_head_init_xavier():
    feats = make_features(2, dims=None)
    torch.manual_seed(0)
    big = IISANTower(feats, MODS[:2], N, 64, IISANConfig(side_dim=DS, bottleneck=R, image_head_init="xavier"))
    w = big.heads[1].weight  # [C, d_s, d]
    assert float(w[1].detach().std()) == pytest.approx(math.sqrt(2 / (DS + 64)), rel=0.15)
    assert bool((big.heads[1].bias[1] == 0).all())
    torch.manual_seed(0)
    default = IISANTower(feats, MODS[:2], N, 64, IISANConfig(side_dim=DS, bottleneck=R))
    torch.testing.assert_close(big.heads[1].weight[0], default.heads[1].weight[0])  # text head untouched
    assert not torch.equal(big.heads[1].weight[1], default.heads[1].weight[1])


# --------------------------------------------------------------------------------------------- recipe
def test_official_recipe_sets_every_switch():
    cfg = load_config([ROOT / "configs" / "iisan_official.yaml"])
    assert (cfg.method, cfg.modalities) == ("iisan", ["text", "image"])
    assert (cfg.iisan.dropout, cfg.iisan.lr_groups, cfg.iisan.missing, cfg.iisan.image_head_init) == (
        0.0, "official", "zeros", "xavier")
    assert (cfg.user.variant, cfg.train.negatives, cfg.train.pop_smoothing, cfg.cache.standardize) == (
        "iisan_official", "slots", 0.0, False)


def test_official_recipe_model_trains_one_step():
    """The whole recipe assembles (user encoder, slots loss, official groups) and a step lowers nothing
    into NaN: one Adam step on a tiny IISAN from random states."""
    from crossan.recommender import Recommender

    cfg = load_config([ROOT / "configs" / "iisan_official.yaml"], [f"iisan.side_dim={DS}", f"user.dim={D}"])
    feats = make_features(2, missing={"image": [2]})
    tower = IISANTower(feats, MODS[:2], N, D, cfg.iisan)
    model = Recommender(tower, cfg, torch.arange(N + 1) % 4)
    opt = torch.optim.Adam(param_groups(model, cfg))
    seq = torch.randint(1, N + 1, (6, cfg.data.max_seq_len + 1))
    seq[0, :4] = 0
    inputs = seq[:, :-1]
    targets = torch.where(inputs > 0, seq[:, 1:], 0)
    loss = model.loss(inputs, targets)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    with pytest.raises(ValueError, match="negatives=slots"):
        model.loss(inputs, targets.roll(1, 0))


def _per_slot_loss():
    """The slots loss written over all B·(L+1) slot columns (the direct form), as benchmarks/loss_candidates.py
    times it: the reference for the unique-column form in crossan.recommender."""
    return load_benchmark("loss_candidates").per_slot_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slots_loss_equals_the_per_slot_form_in_value_and_gradients(seed):
    inputs, targets, states, table, g = _windows(seed)
    L = inputs.shape[1]
    uniq, inv = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)
    lp = torch.randn(len(uniq), generator=g, dtype=torch.float64)
    results = []
    for fn in (slots_softmax_loss, _per_slot_loss()):
        s = states.double().requires_grad_()
        e = table[uniq].double().requires_grad_()
        loss = fn(s, e, uniq, slots, targets > 0, lp)
        loss.backward()
        results.append((loss.detach(), s.grad, e.grad))
    for got, want in zip(results[0], results[1]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
