"""Measurement helpers used by the benchmarks."""

from __future__ import annotations

import torch

from crossan.utils import cpu_allocation_peak, state_bytes


def test_cpu_allocation_peak_follows_allocations_and_frees() -> None:
    before = torch.ones(1_000_000)  # 4 MB that exist before: neither counted nor their release

    def work() -> None:
        nonlocal before
        a = torch.ones(2_000_000)  # 8 MB
        b = a * 2  # +8 MB: peak 16 MB
        del a, b
        c = torch.ones(500_000)  # 2 MB after the peak
        del c
        before = None

    peak = cpu_allocation_peak(work)
    assert 16_000_000 <= peak < 16_500_000, peak


def test_state_bytes_counts_parameters_buffers_and_adam_moments() -> None:
    lin = torch.nn.Linear(10, 5)  # 55 parameters
    lin.register_buffer("scale", torch.zeros(3))
    opt = torch.optim.Adam(lin.parameters())
    assert state_bytes(lin) == (55 + 3) * 4
    lin(torch.randn(2, 10)).sum().backward()
    opt.step()  # exp_avg and exp_avg_sq per parameter, plus a scalar step count each
    assert state_bytes(lin, opt) == (55 + 3) * 4 + 2 * 55 * 4 + sum(
        s["step"].numel() * s["step"].element_size() for s in opt.state.values())
