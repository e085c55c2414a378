"""Speed paths that must not change what is computed (issue 14): the training table of side inputs
(``cache.train_table``) and the CPU dropout masks of :mod:`crossan.dropout`."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from tests.test_side_networks import DS, MODS, K, N, make_features, make_tower

from crossan.dropout import Dropout, dropout, dropout_rate, keep_mask
from crossan.precision import autocast

ITEMS = torch.tensor([3, 1, 7, 12, 5, 0, 2])  # the padding row and missing modalities included


def tower_pair(method: str, M: int, dims: list[int] | None = None, **kw):
    """The same standardised bf16 tower twice: reading the table and gathering every batch."""
    feats = make_features(M, dims=dims, missing={MODS[0]: [2, 5], MODS[-1]: [7]})
    torch.manual_seed(0)
    a = make_tower(method, M, feats, dropout=0.1, **kw).standardize_inputs()
    b = copy.deepcopy(a)
    object.__setattr__(b, "features", feats)  # deepcopy copied the (non-submodule) source; share it
    a.precision = b.precision = "bf16"
    a.train_table, b.train_table = True, False
    return a.train(), b.train()


def step(tower, seed: int = 5):
    """One training forward and backward under the autocast a Recommender step enters."""
    torch.manual_seed(seed)
    with autocast("bf16", torch.device("cpu")):
        out = tower(ITEMS)
    out.float().square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,M", [("crossan", 2), ("crossan", 3), ("iisan", 2), ("iisan", 3)])
def test_train_table_is_bit_identical_to_gathering(method, M):
    with_table, without = tower_pair(method, M)
    out_a, grads_a = step(with_table)
    out_b, grads_b = step(without)
    assert "_side_table" in with_table.__dict__ and "_side_table" not in without.__dict__
    assert with_table.__dict__["_side_table"][1].dtype == torch.bfloat16
    assert torch.equal(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def test_train_table_follows_new_statistics():
    """Loading other standardisation statistics (a checkpoint) rebuilds the table."""
    with_table, without = tower_pair("crossan", 2)
    step(with_table)
    old = with_table.__dict__["_side_table"][1]
    other = copy.deepcopy(without)
    with torch.no_grad():
        for name, buf in other.named_buffers():
            if name.startswith("input_mean_"):
                buf.add_(0.5)
    state = other.state_dict()
    with_table.load_state_dict(state)
    without.load_state_dict(state)
    for t in (with_table, without):
        t.zero_grad()
    out_a, _ = step(with_table)
    out_b, _ = step(without)
    assert with_table.__dict__["_side_table"][1] is not old
    assert torch.equal(out_a, out_b)


def test_train_table_only_where_it_applies():
    with_table, _ = tower_pair("crossan", 2)
    cpu = torch.device("cpu")
    assert with_table.side_table(cpu) is None  # outside autocast the compute dtype is float32
    with_table(ITEMS)
    assert "_side_table" not in with_table.__dict__
    with_table.eval()
    with torch.no_grad():
        with_table(ITEMS)  # evaluation reads the cache in float32
    assert "_side_table" not in with_table.__dict__
    projected, _ = tower_pair("crossan", 2, dims=[DS + 4, DS])  # a projection: inputs depend on weights
    step(projected)
    assert "_side_table" not in projected.__dict__
    frozen = make_tower("frozen", 2, make_features(2))
    frozen.precision, frozen.train_table = "bf16", True
    frozen.train()(ITEMS)
    assert "_side_table" not in frozen.__dict__


def test_keep_mask_half_precision_bits_match_conversion():
    """bf16/fp16 masks are written as bit patterns; they equal the converted float32 mask exactly."""
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(11)
        fast = keep_mask((7, 33, 5), 0.2, dtype)
        torch.manual_seed(11)
        ref = keep_mask((7, 33, 5), 0.2, torch.float32)
        assert fast.dtype == dtype and torch.equal(fast.float(), ref)
        assert set(fast.unique().tolist()) == {0.0, 1.0}


def test_cpu_dropout_scales_exactly_and_replays():
    x = torch.full((4096,), 3.0, requires_grad=True)
    torch.manual_seed(2)
    y = dropout(x, 0.1, True)
    q = dropout_rate(0.1)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 / (1 - q)), rtol=0, atol=1e-6)
    assert 0.87 < kept.float().mean() < 0.93
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - q))
    torch.manual_seed(2)
    assert torch.equal(dropout(x, 0.1, True), y)
    assert torch.equal(dropout(x, 0.1, False), x) and torch.equal(dropout(x, 0.0, True), x)
    module = Dropout(0.1)
    assert torch.equal(module.eval()(x), x)
    torch.manual_seed(2)
    assert torch.equal(module.train()(x), y)


@pytest.mark.parametrize("p", [1e-6, 2.0 ** -18, 1 - 1e-6, 1 - 2.0 ** -18])
def test_cpu_dropout_rates_that_round_to_zero_or_one(p):
    """Rates within 2^-17 of 0 or 1 round to 0 or 1 (their int16 threshold would overflow): keep or zero."""
    from crossan.towers.sanb import GroupedSANB

    x, y = torch.full((64, 8), 2.0), torch.full((64, 8), 5.0)
    everything = dropout_rate(p) == 0
    assert dropout_rate(p) in (0.0, 1.0)
    assert torch.equal(keep_mask((64, 8), p), torch.full((64, 8), 1.0 if everything else 0.0))
    assert torch.equal(dropout(y, p, True), y if everything else torch.zeros_like(y))
    sanb = GroupedSANB(2, 8, 4, dropout=p, init_std=0.5)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        branch = sanb.eval()(x) - x
        out = sanb.train()(x)
    torch.testing.assert_close(out, x + branch if everything else x, rtol=0, atol=1e-6)


def test_state_bytes_counts_the_training_table():
    from crossan.utils import state_bytes

    with_table, without = tower_pair("crossan", 2)
    before = state_bytes(with_table)
    step(with_table)
    table = with_table.__dict__["_side_table"][1]
    assert state_bytes(with_table) == before + table.numel() * 2
    assert table.shape == (K, 2, N + 1, DS)


@pytest.mark.parametrize("method,M", [("crossan", 2), ("crossan", 3), ("iisan", 2), ("iisan", 3)])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("standardized", [True, False])
@pytest.mark.parametrize("half_cache", [True, False])
def test_in_memory_inputs_are_bit_identical_to_gathering(method, M, precision, standardized, half_cache):
    """The tap-major inputs read block by block from an in-memory cache (``_tap_major_from_memory``, every
    batch's path) give exactly what gathering the states and standardising them does (``encode(gather)``),
    outputs and gradients, with missing modalities and the padding row in the batch."""
    feats = make_features(M, missing={MODS[0]: [2, 5], MODS[-1]: [7]})
    if half_cache:
        feats.to_memory()  # fp16, as a cache on disk is
    torch.manual_seed(0)
    tower = make_tower(method, M, feats, dropout=0.1)
    if standardized:
        tower.standardize_inputs()
    tower.precision = precision
    twin = copy.deepcopy(tower)
    object.__setattr__(twin, "features", feats)
    cpu = torch.device("cpu")
    with autocast(precision, cpu):
        assert tower._tap_major_from_memory(ITEMS) is not None
        torch.manual_seed(5)
        fast = tower.train()(ITEMS)
        torch.manual_seed(5)
        slow = twin.train().encode(feats.gather(ITEMS))
    fast.float().square().sum().backward()
    slow.float().square().sum().backward()
    assert fast.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert torch.equal(fast, slow)
    grads = {n: p.grad for n, p in twin.named_parameters()}
    assert all(torch.equal(p.grad, grads[n]) for n, p in tower.named_parameters() if p.grad is not None)


def test_in_memory_inputs_only_where_they_apply():
    projected = make_tower("crossan", 2, make_features(2, dims=[DS + 4, DS]))  # inputs depend on weights
    assert projected._tap_major_from_memory(ITEMS) is None
    feats = make_features(2)
    feats._states = {m: s.numpy() for m, s in feats._states.items()}  # memory-mapped caches are numpy arrays
    assert make_tower("crossan", 2, feats)._tap_major_from_memory(ITEMS) is None


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on a CPU needs a C++ compiler")
@pytest.mark.parametrize("method,M", [("crossan", 3), ("iisan", 2)])
def test_compiled_side_network_matches_eager(method, M):
    """``train.compile``: the side network run through ``torch.compile`` computes what the eager code does,
    up to bf16 rounding (inductor keeps fused intermediates in float32), forward and backward, with the same
    dropout masks; and it is only used where it applies (training with gradients on a CPU)."""
    from crossan.towers import content

    feats = make_features(M, missing={MODS[0]: [2, 5], MODS[-1]: [7]})
    torch.manual_seed(0)
    eager = make_tower(method, M, feats, dropout=0.1).standardize_inputs()
    fast = copy.deepcopy(eager)
    object.__setattr__(fast, "features", feats)
    eager.precision = fast.precision = "bf16"
    fast.compile = True
    out_e, grads_e = step(eager.train())
    out_c, grads_c = step(fast.train())
    chains = next(f for f in content._COMPILED if f.__name__ == f"{method}_chains")
    assert fast.side_step(chains, out_c) is content._COMPILED[chains]
    assert eager.side_step(chains, out_c) is chains
    with torch.no_grad():
        assert fast.side_step(chains, out_c) is chains  # no gradients: eager
    assert fast.eval().side_step(chains, out_c) is chains  # evaluation: eager
    scale = out_e.float().std()
    assert (out_c.float() - out_e.float()).abs().max() < 0.02 * scale
    assert grads_e.keys() == grads_c.keys()
    for name, g in grads_e.items():
        cos = torch.nn.functional.cosine_similarity(g.flatten().double(), grads_c[name].flatten().double(), dim=0)
        assert cos > 0.999, (name, float(cos))



def _torch_keep_mask(shape, p, dtype):
    """The CPU mask as first written (torch ops on the SFC64 words), the reference for the numpy form."""
    import math

    import numpy as np

    n = math.prod(shape)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    words = torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int64))
    t = round(p * 2 ** 16) - 2 ** 15
    bits = words.view(torch.int16)[:n].clamp(t - 1, t).sub_(t - 1)
    if dtype in (torch.bfloat16, torch.float16):
        return bits.mul_(0x3F80 if dtype == torch.bfloat16 else 0x3C00).view(dtype).view(shape)
    return bits.to(dtype).view(shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_masks_made_side_by_side_are_the_masks_drawn_in_turn(dtype):
    """``keep_masks`` (threads) gives bit for bit the masks of ``count`` calls of ``keep_mask`` in a row, which
    give those of the torch form they replaced; and torch's generator ends in the same state."""
    from crossan.dropout import keep_masks
    from crossan.towers.sanb import branch_masks

    shape, p = (3, 37, 50), 0.1
    torch.manual_seed(11)
    ref = [_torch_keep_mask(shape, p, dtype) for _ in range(5)]
    after = torch.rand(3)
    torch.manual_seed(11)
    one_by_one = [keep_mask(shape, p, dtype) for _ in range(5)]
    torch.manual_seed(11)
    side_by_side = keep_masks(5, shape, p, dtype)
    assert torch.equal(torch.rand(3), after)
    torch.manual_seed(11)
    masks, scale = branch_masks(5, shape, dtype, p, True, "cpu")
    assert scale == 1 / (1 - dropout_rate(p))
    for got in (one_by_one, side_by_side, masks):
        assert len(got) == 5 and all(g.dtype == dtype and torch.equal(g, r) for g, r in zip(got, ref))
    assert not torch.equal(ref[0], ref[1])
    assert branch_masks(5, shape, dtype, p, False, "cpu") == ([None] * 5, 1.0)


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_threads_start_no_openmp_team(monkeypatch, dtype):
    """The mask threads write through numpy only. A torch operation there (the int16 → float32 conversion
    did) starts an OpenMP team in each, and libgomp, then managing more threads than cores, stops
    spin-waiting between the parallel regions of the training step (docs/results.md §3w)."""
    import os

    from crossan import dropout as dropout_module

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(dropout_module, "_POOL", None)  # a fresh pool: its threads are counted
        before = set(os.listdir("/proc/self/task"))  # thread ids: a thread ending elsewhere does not count
        masks = dropout_module.keep_masks(4, (2, 600, 768), 0.1, dtype)
        started = len(set(os.listdir("/proc/self/task")) - before)
    finally:
        torch.set_num_threads(old)
        if dropout_module._POOL is not None:  # its threads end now, not during another test's count
            dropout_module._POOL[2].shutdown(wait=True)
    assert started == 2  # the pool's two workers, nothing else
    assert all(m.dtype == dtype and m.shape == (2, 600, 768) for m in masks)
