"""Per-chain parameters for layers that the side networks otherwise hold as one tensor for all chains.

The grouped layers of :mod:`crossan.towers.sanb` keep every chain's weights in one tensor (one batched matmul
per depth). An optimiser gives one learning rate per tensor, and Adam's step does not change when a gradient
is scaled, so chains that must train at different rates (``iisan.lr_groups: official``) need their own
tensors. :func:`split_grouped_linear` and :func:`split_gate` turn a layer into one that stores a parameter
per chain and stacks them in its forward pass: the same numbers and the same initial values, one tensor
per chain for :meth:`~crossan.towers.iisan.IISANTower.param_groups` to place.
"""

from __future__ import annotations

import torch
from torch import nn

from crossan.towers.sanb import Gate, GroupedLinear


class SplitGroupedLinear(GroupedLinear):
    """A :class:`GroupedLinear` whose G weight/bias slices are separate parameters (``weights[g]``, ``biases[g]``)."""

    def __init__(self, source: GroupedLinear) -> None:
        nn.Module.__init__(self)
        self.weights = nn.ParameterList(nn.Parameter(w.detach().clone()) for w in source.weight)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().clone()) for b in source.bias)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return torch.stack(list(self.weights))

    @property
    def bias(self) -> torch.Tensor:  # type: ignore[override]
        return torch.stack(list(self.biases))

    def chain_parameters(self, g: int) -> list[nn.Parameter]:
        """Chain ``g``'s weight and bias."""
        return [self.weights[g], self.biases[g]]


class SplitGate(Gate):
    """A :class:`Gate` of shape [K, C] whose C columns (one per chain) are separate parameters ``columns[c]``."""

    def __init__(self, source: Gate) -> None:
        nn.Module.__init__(self)
        self.temperature = source.temperature
        self.columns = nn.ParameterList(nn.Parameter(c.detach().clone()) for c in source.logit.T)

    @property
    def logit(self) -> torch.Tensor:  # type: ignore[override]
        return torch.stack(list(self.columns), 1)

    def chain_parameters(self, c: int) -> list[nn.Parameter]:
        """The gate logits [K] of chain ``c``."""
        return [self.columns[c]]


def split_grouped_linear(layer: GroupedLinear) -> SplitGroupedLinear:
    """``layer`` with one parameter per chain (same values)."""
    return SplitGroupedLinear(layer)


def split_gate(gate: Gate) -> SplitGate:
    """``gate`` (shape [K, C]) with one parameter per chain column (same values)."""
    if gate.logit.dim() != 2:
        raise ValueError(f"split_gate needs a [K, C] gate, got shape {tuple(gate.logit.shape)}")
    return SplitGate(gate)
