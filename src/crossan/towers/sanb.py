"""Building blocks of the side networks shared by IISAN and CROSSAN (METHOD.md §4).

* :class:`SANB` — the side adapter block ``x + W_up · ReLU(W_down · x + b_down) + b_up`` (d_s → r → d_s);
* :class:`GroupedSANB` — G independent SANBs (one per chain) applied at once with batched matmuls;
* :class:`GroupedLinear` — G independent ``Linear`` layers applied at once (the chains' heads);
* :class:`Gate` — learnable gates ``g = sigmoid(a / T)``, ``a`` initialised to 0 (so g starts at 0.5);
* :class:`ModalityProjection` — one ``Linear(D_m → d_s)`` per modality, shared by its K taps, only where
  ``D_m ≠ d_s``;
* :func:`masked_softmax` — a softmax over the allowed entries only, all-zero where nothing is allowed;
* :func:`sanb_step` — the grouped SANBs as a function of their weights and a keep mask (:func:`branch_mask`),
  the form the side networks' depth steps use (compiled with ``train.compile``).

Branch dropout (``iisan.dropout`` / ``crossan.dropout``, default 0.1 for both, METHOD.md §4): element-wise,
each entry of the branch output kept with probability 1 − p and scaled by 1 / (1 − p), in training only.
On a CPU the mask is :func:`crossan.dropout.keep_mask` (16 bits per entry from 64-bit random words seeded
by torch's generator; p is rounded to a multiple of 2^-16 and the scale uses the rounded p) instead of
``torch.bernoulli_``, which draws one double per entry and cost about as much as all the side network's
matrix products together; on a GPU it is ``rand >= p`` on the device. The mask multiplies the branch in
the residual's one fused pass (``addcmul``). Either way a seeded run replays the same masks.
"""

from __future__ import annotations

import torch
from torch import nn

from crossan.dropout import KEEP_MASK_BITS, dropout_rate, keep_mask, keep_masks

__all__ = ["KEEP_MASK_BITS", "SANB", "Gate", "GroupedLinear", "GroupedSANB", "ModalityProjection", "branch_mask",
           "branch_masks", "dropout_rate", "grouped_affine", "keep_mask", "masked_softmax", "sanb_step"]


class SANB(nn.Module):
    """Side adapter block (METHOD.md §4): ``x + dropout(W_up · ReLU(W_down · x + b_down) + b_up)``.

    Weights ~ N(0, init_std²), biases 0, so the block starts close to the identity. Dropout acts on the
    branch only, never on the residual path.
    """

    def __init__(self, dim: int, bottleneck: int = 64, dropout: float = 0.1, init_std: float = 0.01) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.up(self.act(self.down(x))))


class GroupedSANB(nn.Module):
    """G independent SANBs applied in one go: ``x`` [G, U, d_s] → [G, U, d_s], group g through block g.

    The side networks run one block per chain at each depth, all of the same shape; doing the G blocks of a
    depth as two batched matmuls (``torch.baddbmm``) instead of G small ``Linear`` calls gives the same
    numbers with a fraction of the kernel launches and elementwise passes. Parameters are exactly those of G
    :class:`SANB` s (``down_weight`` [G, d_s, r], ``down_bias`` [G, 1, r], ``up_weight`` [G, r, d_s],
    ``up_bias`` [G, 1, d_s]), initialised the same way (weights ~ N(0, init_std²), biases 0). With G = 1
    the one block is applied to every group of the input (``share_adapters``).
    """

    def __init__(self, groups: int, dim: int, bottleneck: int = 64, dropout: float = 0.1,
                 init_std: float = 0.01) -> None:
        super().__init__()
        self.groups, self.dim, self.bottleneck = groups, dim, bottleneck
        self.down_weight = nn.Parameter(torch.empty(groups, dim, bottleneck).normal_(0.0, init_std))
        self.down_bias = nn.Parameter(torch.zeros(groups, 1, bottleneck))
        self.up_weight = nn.Parameter(torch.empty(groups, bottleneck, dim).normal_(0.0, init_std))
        self.up_bias = nn.Parameter(torch.zeros(groups, 1, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask, scale = branch_mask(x.shape, x.dtype, self.dropout.p, self.training, x.device)
        return sanb_step(x, self.down_weight, self.down_bias, self.up_weight, self.up_bias, mask, scale)

    def block(self, g: int) -> SANB:
        """Group ``g`` as a stand-alone :class:`SANB` (a copy; for inspection and reference checks)."""
        sanb = SANB(self.dim, self.bottleneck, self.dropout.p)
        with torch.no_grad():
            sanb.down.weight.copy_(self.down_weight[g].T)
            sanb.down.bias.copy_(self.down_bias[g, 0])
            sanb.up.weight.copy_(self.up_weight[g].T)
            sanb.up.bias.copy_(self.up_bias[g, 0])
        return sanb.train(self.training)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, dim={self.dim}, bottleneck={self.bottleneck}"


class GroupedLinear(nn.Module):
    """G independent ``Linear(in → out)`` layers: ``x`` [G, U, in] → [G, U, out] (``nn.Linear``'s init)."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = in_features ** -0.5
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_affine(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        G, i, o = self.weight.shape
        return f"groups={G}, in_features={i}, out_features={o}"


def grouped_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x[g] @ weight[g] + bias[g]`` for every group g (one weight for all groups when ``weight`` has one)."""
    if weight.shape[0] == x.shape[0]:
        return torch.baddbmm(bias, x, weight)
    G, U, _ = x.shape  # a single shared weight: one plain matmul over all groups' rows
    return torch.addmm(bias[0], x.reshape(G * U, -1), weight[0]).view(G, U, -1)


class Gate(nn.Module):
    """Independent scalar gates ``g = sigmoid(a / T)`` of any ``shape`` (METHOD.md §4; a = 0 → g = 0.5).

    ``Gate()`` is one scalar gate; ``Gate(K, M)`` holds one gate per depth and modality, evaluated at once.
    """

    def __init__(self, *shape: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature
        self.logit = nn.Parameter(torch.zeros(shape))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logit / self.temperature)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.logit.shape)}, temperature={self.temperature}"


class ModalityProjection(nn.Module):
    """Maps each modality's tapped states ``[U, K, D_m]`` to the side width ``d_s`` (METHOD.md §4).

    One ``Linear(D_m → d_s)`` per modality, shared by all K taps (and by every chain that reads the
    modality); modalities already at ``d_s`` pass through unchanged and cost no parameters.
    """

    def __init__(self, dims: dict[str, int], side_dim: int) -> None:
        super().__init__()
        self.side_dim = side_dim
        self.proj = nn.ModuleDict(
            {m: nn.Linear(d, side_dim) if d != side_dim else nn.Identity() for m, d in dims.items()})

    def forward(self, modality: str, states: torch.Tensor) -> torch.Tensor:
        return self.proj[modality](states)

    @staticmethod
    def num_params(dims: dict[str, int] | list[int], side_dim: int) -> int:
        ds = dims.values() if isinstance(dims, dict) else dims
        return sum(d * side_dim + side_dim for d in ds if d != side_dim)


def branch_mask(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, p: float, training: bool,
                device: torch.device | str = "cpu") -> tuple[torch.Tensor | None, float]:
    """The keep mask of a SANB branch of ``shape`` and its scale: ``(mask, 1 / (1 − p'))``, or ``(None, 1.0)``
    where nothing is dropped (evaluation, p' = 0). On a CPU the mask is :func:`keep_mask` (p' is p rounded to
    a multiple of 2^-16); elsewhere ``rand >= p`` from the device's generator (p' = p)."""
    device = torch.device(device)
    q = (dropout_rate(p) if device.type == "cpu" else p) if training else 0.0
    if q <= 0:
        return None, 1.0
    if q >= 1:
        return torch.zeros(shape, dtype=dtype, device=device), 1.0
    if device.type == "cpu":
        return keep_mask(shape, q, dtype), 1.0 / (1.0 - q)
    return (torch.rand(shape, device=device) >= q).to(dtype), 1.0 / (1.0 - q)


def branch_masks(count: int, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, p: float, training: bool,
                 device: torch.device | str = "cpu") -> tuple[list[torch.Tensor | None], float]:
    """``count`` masks of :func:`branch_mask` (the same ones, drawn in turn) and their scale; on a CPU made side
    by side on torch's threads (:func:`~crossan.dropout.keep_masks`)."""
    device = torch.device(device)
    q = dropout_rate(p) if training and device.type == "cpu" else 0.0
    if 0 < q < 1:
        return keep_masks(count, shape, q, dtype), 1.0 / (1.0 - q)
    drawn = [branch_mask(shape, dtype, p, training, device) for _ in range(count)]
    return [mask for mask, _ in drawn], drawn[0][1] if drawn else 1.0


def sanb_step(x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor, up_weight: torch.Tensor,
              up_bias: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """:class:`GroupedSANB`'s forward as a function of its weights and a keep ``mask`` (:func:`branch_mask`):
    ``x + scale · mask ⊙ (W_up · ReLU(W_down · x + b_down) + b_up)``, the branch in ``x``'s dtype, the residual
    in one fused pass. A function of tensors only, so that one compiled graph of a side network's depth
    serves every depth (``train.compile``)."""
    a = grouped_affine(x, down_weight, down_bias).relu()
    y = grouped_affine(a, up_weight, up_bias).to(x.dtype)
    return x + y if mask is None else torch.addcmul(x, y, mask, value=scale)


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` over the entries where ``mask`` is True (broadcast to ``logits``).

    Masked entries get exactly 0; a slice with no allowed entry is all zeros (never NaN), and no gradient
    flows into masked logits.
    """
    mask = mask.expand_as(logits)
    any_allowed = mask.any(dim, keepdim=True)
    safe = torch.where(any_allowed, logits.masked_fill(~mask, float("-inf")), torch.zeros_like(logits))
    return torch.where(mask, torch.softmax(safe, dim), torch.zeros_like(logits))
