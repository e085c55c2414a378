"""SASRec user encoder (Kang & McAuley, ICDM 2018) as used by IISAN/CROSSAN (METHOD.md §8).

A causal Transformer over the item embeddings of a left-padded history: learned positions, post-LayerNorm
blocks, one output vector per position (the last one represents the user for next-item prediction).

Two variants (``user.variant``), the same for every method of a comparison:

* ``crossan`` (default): biases on Q/K/V and the attention output, GELU, dropout after the attention output,
  inside the feed-forward and after it, LayerNorm eps 1e-5, weights N(0, 0.02²), padding positions zeroed.
* ``iisan_official``: the SASRec of IISAN's official code — no bias on Q/K/V and the attention output,
  ReLU, LayerNorm eps 1e-6, Xavier-normal weights (embeddings included, biases 0), dropout after the
  attention output and after the feed-forward output only (within a block), padding positions left as embedded.

In both, dropout also acts on the embedded input (after its LayerNorm) and on the attention weights
(``scaled_dot_product_attention``'s ``dropout_p``, as in IISAN's official attention), and padding positions
are masked as attention keys, so what a padding position holds never reaches a real position; the padding
difference changes nothing at the positions the loss reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossan.config import UserEncoderConfig
from crossan.dropout import Dropout


class Block(nn.Module):
    """One post-LayerNorm Transformer block: attention sublayer, then feed-forward sublayer."""

    def __init__(self, dim: int, n_heads: int, ffn_mult: int, dropout: float, official: bool = False) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        bias, eps = not official, 1e-6 if official else 1e-5
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.ln1 = nn.LayerNorm(dim, eps=eps)
        if official:  # dropout after the feed-forward output only (self.drop below); Identity keeps the
            # second Linear at index 3 in both variants, so weight names (ffn.0, ffn.3) do not depend on it
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.ReLU(), nn.Identity(),
                                     nn.Linear(ffn_mult * dim, dim))
        else:
            self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), Dropout(dropout),
                                     nn.Linear(ffn_mult * dim, dim))
        self.ln2 = nn.LayerNorm(dim, eps=eps)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        a = a.transpose(1, 2).reshape(B, L, D)
        x = self.ln1(x + self.drop(self.proj(a)))
        return self.ln2(x + self.drop(self.ffn(x)))


class SASRec(nn.Module):
    """The user encoder of ``cfg.variant`` (see the module docstring)."""

    def __init__(self, cfg: UserEncoderConfig, max_len: int) -> None:
        super().__init__()
        self.dim = cfg.dim
        self.official = cfg.variant == "iisan_official"
        self.pos = nn.Embedding(max_len, cfg.dim)
        self.drop = Dropout(cfg.dropout)
        self.ln = nn.LayerNorm(cfg.dim, eps=1e-6 if self.official else 1e-5)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.ffn_mult, cfg.dropout, self.official)
                                    for _ in range(cfg.n_layers))
        self.apply(self._init_official if self.official else self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _init_official(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.xavier_normal_(m.weight)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, item_emb: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``item_emb`` [B, L, d] of the history ``items`` [B, L] (0 = padding) → user states [B, L, d]."""
        B, L, _ = item_emb.shape
        valid = items > 0
        # position i may attend to j <= i among real items; a padding position attends to itself only,
        # so no row of the mask is empty (no NaNs) and padding never leaks into real positions.
        causal = torch.ones(L, L, dtype=torch.bool, device=items.device).tril()
        mask = causal & valid[:, None, :]
        mask = mask | torch.eye(L, dtype=torch.bool, device=items.device)
        x = self.drop(self.ln(item_emb + self.pos.weight[:L]))
        if not self.official:
            x = x * valid[..., None]
        for blk in self.blocks:
            x = blk(x, mask[:, None])
        return x
