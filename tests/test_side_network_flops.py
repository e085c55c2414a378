"""The side networks' arithmetic as known values (issue 14's matmul floor, METHOD.md §5–6).

A chain's SANB at one depth is two products, U × d_s × r each way, so K depths of C chains cost
``4·K·C·U·d_s·r`` FLOPs forward and twice that backward. CROSSAN runs C = M chains (linear in M) and adds, for
M ≥ 3, one exchange product over the modality axis per depth from the second on (``2·M·M·U·d_s``); IISAN runs
C = M + M(M − 1)/2 chains (quadratic in M). ``torch.utils.flop_counter`` must count exactly that: a product
added to a chain, or one computed twice, changes the count.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from crossan.towers.crossan import Exchange, crossan_chains
from crossan.towers.iisan import iisan_chains

K, U, DS, R = 3, 50, 32, 8


def blocks(C: int) -> list[tuple[torch.Tensor, ...]]:
    """K depths of C chains' SANB weights (down weight and bias, up weight and bias), trainable."""
    return [tuple(torch.randn(shape, requires_grad=True) for shape in
                  ((C, DS, R), (C, 1, R), (C, R, DS), (C, 1, DS))) for _ in range(K)]


def counted(fn) -> tuple[int, int]:
    """FLOPs of ``fn()``'s forward, and of forward and backward together."""
    with FlopCounterMode(display=False) as fwd:
        out = fn()
    with FlopCounterMode(display=False) as both:
        fn().square().sum().backward()
    assert out.shape[1:] == (U, DS)
    return fwd.get_total_flops(), both.get_total_flops()


@pytest.mark.parametrize("M", [2, 3, 4])
def test_crossan_chains_cost_is_linear_in_the_modalities(M: int):
    torch.manual_seed(0)
    h = torch.randn(K, M, U, DS)
    g = torch.full((K, M, 1, 1), 0.5, requires_grad=True)
    a = torch.ones(M, U, 1)
    exchange = Exchange(K - 1, M)
    w = blocks(M)
    masks = [torch.ones(M, U, DS)] * K

    def run() -> torch.Tensor:
        mixes = [None] + [exchange.coefficients(a, k - 1, h.dtype) for k in range(1, K)]
        return crossan_chains(h, g, mixes, w, masks, 1.0)

    fwd, both = counted(run)
    sanb = 4 * K * M * U * DS * R
    mix = (K - 1) * 2 * M * M * U * DS if M >= 3 else 0  # M = 2: the partner is a flip, no product
    small = (K - 1) * 2 * M * M * U if M >= 3 else 0  # the softmax's denominators E·a, [M, M] × [M, U]
    assert fwd == sanb + mix + small
    assert both == 3 * (sanb + mix) + 2 * small  # backward: two products per product (E·a: the one for E)


@pytest.mark.parametrize("M", [2, 3, 4])
def test_iisan_chains_cost_grows_with_the_pairs(M: int):
    torch.manual_seed(0)
    pairs = [(i, j) for i in range(M) for j in range(i + 1, M)]
    C = M + len(pairs)
    h = torch.randn(K, M, U, DS)
    g = torch.full((K, C, 1, 1), 0.5, requires_grad=True)
    left, right = h[:, [i for i, _ in pairs]], h[:, [j for _, j in pairs]]
    w = blocks(C)
    fwd, both = counted(lambda: iisan_chains(h, g, (left, right), w, [torch.ones(C, U, DS)] * K, 1.0))
    assert fwd == 4 * K * C * U * DS * R
    assert both == 3 * fwd


def test_the_benchmark_interactions_have_microlens_100k_s_density():
    """``side_network_epoch.py``'s synthetic data: MicroLens-100K's 7.19 interactions per user (719,405 over
    100,000 users), at least 5 each. Its first version drew 5-13 (9.0 on average): 25% more interactions and
    distinct items per batch than the data it stands for, so every s/epoch and floor was too high."""
    from conftest import load_benchmark

    bench = load_benchmark("side_network_epoch")
    raw = bench.synthetic_sequences(20_000, 2_000, seed=1)
    lengths = [len(v) for v in raw.sequences.values()]
    assert min(lengths) == 5 and abs(sum(lengths) / len(lengths) - 7.19405) < 0.05
    with pytest.raises(ValueError, match="at least 5"):
        bench.synthetic_sequences(10, 10, seed=1, per_user=4.0)
