"""The sequential recommender: an item tower (any method) + the SASRec user encoder + the training loss.

Training embeds each *unique* item of a batch once (the expensive part for content towers), gathers the
history and target embeddings from that small table, and scores every position against every slot of the
batch as IISAN's official code does (``train.negatives=slots``, the default: :func:`slots_softmax_loss`) or
against the batch's unique items (``train.negatives=unique``, in-batch softmax, METHOD.md §8).

Precision (``cfg.precision``, :mod:`crossan.precision`): a training step runs the item tower and the user
encoder under bf16 autocast where the setting asks for it; the loss is computed in float32 from float32
copies of the states and embeddings. Evaluation and serving (:meth:`Recommender.user_vectors`, the towers'
``embed_all``) run in float32: they are about 1% of an epoch's work, and float32 keeps scores free of bf16
ties and equal to what an exported model computes. (The frozen encoders run at ``precision`` in both, see
:mod:`crossan.towers.content`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossan import distributed as dist
from crossan.config import Config
from crossan.precision import autocast, full_precision
from crossan.towers.base import ItemTower, check_embeddings
from crossan.user_encoder import SASRec


class Recommender(nn.Module):
    def __init__(self, tower: ItemTower, cfg: Config, item_counts: torch.Tensor) -> None:
        super().__init__()
        if tower.dim != cfg.user.dim:
            raise ValueError(f"item tower width {tower.dim} differs from user.dim {cfg.user.dim}")
        self.tower = tower
        self.method = cfg.method
        self.user = SASRec(cfg.user, cfg.data.max_seq_len)
        self.loss_kind = cfg.train.loss
        self.negatives = cfg.train.negatives
        self.precision = cfg.precision
        self.register_buffer("log_pop", log_popularity(item_counts, cfg.train.pop_smoothing), persistent=False)

    @property
    def num_items(self) -> int:
        return self.tower.num_items

    def embed_unique(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed each distinct row of ``ids`` once. Returns (unique rows [U], their embeddings [U, d] with
        zeros for padding row 0, and the inverse index mapping ``ids`` into them).

        ``uniq`` is sorted, so padding, when the batch holds any, is its first entry: one scalar read tells,
        and the real rows are a slice. (A boolean mask, ``uniq[uniq > 0]``, read the device back a second
        time on a GPU, at every step.)"""
        uniq, inv = torch.unique(ids, return_inverse=True)
        padded = len(uniq) > 0 and bool(uniq[0] == 0)
        rows = uniq[1:] if padded else uniq
        emb = self.tower(rows)
        check_embeddings(self.tower, emb, len(rows), self.method)
        if padded:
            emb = torch.cat([emb.new_zeros(1, emb.shape[1]), emb], 0)
        return uniq, emb, inv

    def user_states(self, item_emb: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.user(item_emb, inputs)

    def user_vectors(self, inputs: torch.Tensor, item_table: torch.Tensor) -> torch.Tensor:
        """Users' next-item query vectors [B, d] from their windows [B, L], reading a precomputed table (float32,
        whatever ``precision``: see the module docstring)."""
        with full_precision(inputs.device):
            return self.user(item_table[inputs].float(), inputs)[:, -1]

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss (``forward`` so that DistributedDataParallel can wrap the model)."""
        return self.loss(inputs, targets)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss over the non-padding positions of a batch of windows [B, L]."""
        B, L = inputs.shape
        if self.loss_kind == "bce":
            ids = torch.cat([inputs, targets, sample_negatives(inputs, targets, self.num_items)], 1)
        else:
            ids = torch.cat([inputs, targets], 1)
        with autocast(self.precision, inputs.device):
            uniq, emb, inv = self.embed_unique(ids)
            states = self.user_states(rows(emb, inv[:, :L]), inputs)  # [B, L, d]
        with full_precision(inputs.device):
            loss = self._loss(states.float(), emb.float(), uniq, inv, inputs, targets)
            if self.training and dist.is_distributed():
                loss = loss * share_weight(targets > 0)
        aux = self.tower.aux_loss()
        return loss if aux is None else loss + aux.float()

    def _loss(self, states: torch.Tensor, emb: torch.Tensor, uniq: torch.Tensor, inv: torch.Tensor,
              inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of ``loss_kind`` from user states [B, L, d] and unique-item embeddings [U, d]."""
        L = inputs.shape[1]
        valid = targets > 0
        if self.loss_kind == "bce":
            pos = (states * rows(emb, inv[:, L:2 * L])).sum(-1)
            neg = (states * rows(emb, inv[:, 2 * L:])).sum(-1)
            loss = F.softplus(-pos) + F.softplus(neg)  # -log σ(pos) - log(1 - σ(neg))
            loss = loss[valid].mean()
        elif self.negatives == "slots":
            if inputs.device.type == "cpu":  # on a GPU the check would wait for the device at every step: the
                check_shifted(inputs, targets)  # trainer checks the whole training set once instead
            slots = torch.cat([inv[:, :L], inv[:, 2 * L - 1:]], 1)  # the L + 1 items of each user's window
            loss = slots_softmax_loss(states, emb, uniq, slots, valid, self.log_pop[uniq])
        else:
            loss = inbatch_softmax_loss(states, emb, uniq, inv[:, :L], inv[:, L:], valid, self.log_pop[uniq])
        return loss


def check_shifted(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """``train.negatives=slots`` reads each window's L + 1 items from the inputs and the last target, which
    holds only when the targets are the inputs shifted by one (0 where the input is padding)."""
    if not bool((targets[:, :-1] == torch.where(inputs[:, :-1] > 0, inputs[:, 1:], 0)).all()):
        raise ValueError("train.negatives=slots needs targets that are the inputs shifted by one")


def share_weight(valid: torch.Tensor) -> torch.Tensor:
    """``W · n_r / Σ n``: under torchrun, the factor that turns this rank's mean over its ``n_r`` valid
    positions into its share of the mean over all ranks' positions. DDP averages the W ranks' gradients, so
    with it every position weighs the same as in one process (without it, a position on a rank with fewer
    positions weighed more); the in-batch softmax still draws its negatives from the rank's own share."""
    n = valid.sum().to(torch.float64).reshape(1)
    total = n.clone()
    dist.all_reduce_sum_([total])
    return (n * dist.world_size() / total).to(torch.float32).squeeze(0)


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 2-D ``table`` whose rows repeat in ``index``, with a deterministic backward.

    Indexing (``table[index]``) sums the gradients of repeated rows with ``index_put_(accumulate=True)``, which on
    a CPU with several threads adds them atomically in whatever order the threads reach them: the gradient's
    last bits, and so a seeded run, changed from run to run (SASRec-ID on the demo data with two threads).
    ``F.embedding``'s backward sums them in a fixed order."""
    return F.embedding(index, table)


def log_popularity(item_counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """log P_pop(j) = log((c_j + s) / (Σ c + s·N)) over the N rows of ``item_counts`` (row 0 = padding, count 0).

    ``s = 1`` (add-one) keeps items unseen in training finite; ``s = 0`` is IISAN's official unsmoothed
    popularity, where a row with no count gets 0 (such a row is padding in training batches, never scored).
    """
    counts = item_counts.double()
    log_p = torch.log((counts + smoothing) / (counts.sum() + smoothing * len(counts)))
    return torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p)).float()


def slots_softmax_loss(states: torch.Tensor, cand_emb: torch.Tensor, cand_rows: torch.Tensor,
                       slots: torch.Tensor, valid: torch.Tensor, log_pop: torch.Tensor) -> torch.Tensor:
    """In-batch softmax over every *slot* of the batch, as IISAN's official code scores it.

    ``slots`` [B, L + 1] index each user's window (inputs, then the last target) into the unique candidates
    (``cand_rows`` [U], embeddings ``cand_emb`` [U, d], ``log_pop`` [U]); position j of user b predicts slot
    (b, j + 1). Candidates are all B·(L + 1) slots, so an item is a negative once per occurrence; slots
    holding any of user b's items are masked for b except the position's own target slot, padding slots
    for everybody. ``states`` [B, L, d]; ``valid`` [B, L] marks real targets.

    Computed over the U unique items instead of the B·(L + 1) slots: the slots holding item j that stay in
    user b's softmax all have the same logit, so together they count as one column with ``log c_j`` added,
    c_j being j's number of slots in the batch. For b's own items only the target slot stays (count 1, no
    term); the others are masked. Same value and gradients as the per-slot form (``tests/test_fidelity.py``
    checks both), at the cost of the unique-item loss (``benchmarks/loss_candidates.py``).
    """
    own = torch.zeros(len(slots), len(cand_rows), dtype=torch.bool, device=states.device)
    own.scatter_(1, slots, True)
    flat = slots.reshape(-1)  # counted by index_add_: on a GPU bincount reads its input's min and max back
    counts = torch.zeros(len(cand_rows), dtype=torch.int64, device=flat.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    log_count = counts.to(states.dtype).log()
    return _own_masked_softmax_loss(states, cand_emb, cand_rows, own, slots[:, 1:], valid, log_pop, log_count)


def inbatch_softmax_loss(states: torch.Tensor, cand_emb: torch.Tensor, cand_rows: torch.Tensor,
                         input_idx: torch.Tensor, target_idx: torch.Tensor, valid: torch.Tensor,
                         log_pop: torch.Tensor) -> torch.Tensor:
    """In-batch softmax cross-entropy with popularity correction (Yi et al., RecSys 2019).

    ``states`` [B, L, d]; candidates are the batch's unique rows ``cand_rows`` [U] with embeddings
    ``cand_emb`` [U, d]; ``input_idx``/``target_idx`` [B, L] index into the candidates. A user's own
    items (inputs and targets) are masked except the position's true target; the padding row is masked.
    """
    own = torch.zeros(len(input_idx), len(cand_rows), dtype=torch.bool, device=states.device)
    own.scatter_(1, input_idx, True)
    own.scatter_(1, target_idx, True)
    return _own_masked_softmax_loss(states, cand_emb, cand_rows, own, target_idx, valid, log_pop)


def _own_masked_softmax_loss(states: torch.Tensor, cand_emb: torch.Tensor, cand_rows: torch.Tensor,
                             own: torch.Tensor, target_idx: torch.Tensor, valid: torch.Tensor,
                             log_pop: torch.Tensor, log_count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the valid positions: logit ``⟨state, item⟩ − log_pop (+ log_count)`` for every
    candidate outside the user's own items (``own`` [B, U]) and the padding row, and ``⟨state, target⟩ −
    log_pop`` for the position's target. Only the valid positions' logits are formed ([n, U], one ``addmm``)."""
    bias = -log_pop if log_count is None else log_count - log_pop  # [U]
    bias = bias.expand(len(own), -1).masked_fill(own | (cand_rows == 0), -torch.inf)  # [B, U]
    b, t = valid.nonzero(as_tuple=True)
    tgt = target_idx[b, t]
    row_bias = bias[b]  # [n, U], a fresh tensor
    row_bias[torch.arange(len(b), device=states.device), tgt] = -log_pop[tgt]
    logits = torch.addmm(row_bias, states[b, t], cand_emb.T)
    return F.cross_entropy(logits, tgt)


def sample_negatives(inputs: torch.Tensor, targets: torch.Tensor, num_items: int, rounds: int = 16) -> torch.Tensor:
    """One negative per position [B, L] for ``train.loss=bce``: uniform over items 1..N, redrawn where it is
    one of the user's own window items (its inputs or targets), as SASRec's sampler does (Kang & McAuley,
    2018), so a negative never contradicts a positive. Redraws are vectorised; what still clashes after
    ``rounds`` of them (a window covering most of a small catalogue) is drawn from the items outside the window
    directly (:func:`_draw_outside`). Only a window holding every item leaves its negatives as drawn: no item
    is left to draw."""
    own = torch.cat([inputs, targets], 1)  # [B, 2L]
    neg = torch.randint(1, num_items + 1, targets.shape, device=targets.device)
    for _ in range(rounds):
        clash = (neg[..., None] == own[:, None, :]).any(-1)
        if not bool(clash.any()):
            return neg
        neg = torch.where(clash, torch.randint_like(neg, 1, num_items + 1), neg)
    clash = (neg[..., None] == own[:, None, :]).any(-1)
    if bool(clash.any()):
        rows, cols = clash.nonzero(as_tuple=True)
        drawn = _draw_outside(own[rows], num_items)
        neg[rows, cols] = torch.where(drawn > 0, drawn, neg[rows, cols])
    return neg


def _draw_outside(own: torch.Tensor, num_items: int) -> torch.Tensor:
    """One item per row of ``own`` [P, W], uniform over 1..N minus the row's items (0 where they are all of
    them): draw r uniform in 1..N − k (k: the row's distinct items) and step it over the row's items in
    ascending order, so that r becomes the r-th item not in the row."""
    items = torch.sort(own, dim=1).values
    distinct = torch.ones_like(items, dtype=torch.bool)
    distinct[:, 1:] = items[:, 1:] != items[:, :-1]
    distinct &= (items >= 1) & (items <= num_items)
    items = torch.where(distinct, items, num_items + 1)  # repeats and padding: beyond every draw
    free = num_items - distinct.sum(1)
    r = (torch.rand(len(own), device=own.device) * free.clamp(min=1)).long() + 1  # 1 … free
    for j in range(items.shape[1]):  # ascending: each own item at or below r pushes it one further
        r = r + (r >= items[:, j]).long()
    return torch.where(free > 0, r, 0)
