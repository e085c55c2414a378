"""Common plumbing of the end-to-end baselines (METHOD.md §9): FFT, Adapter and LoRA.

Unlike the side networks, these towers run each modality's backbone forward *and backward* at every
training step. The tower owns one :class:`~crossan.encoders.ModalityEncoder` per modality (in an
``nn.ModuleDict``, so the backbones' parameters are part of the model: moved, saved and counted with it)::

    h_m   = pool(hidden_states[L_m])          the encoder's pooling over its last layer's output
    item  = ModalityFusionHead(h_1 … h_M)     per modality GELU(Linear(D_m → d)), then Linear(concat → d)

``hidden_states[L_m]`` is the state the frozen-feature baseline reads as its last tap. With
``cache.standardize`` (the default) each of its dimensions is standardised as the content towers standardise
theirs (:meth:`EndToEndTower.standardize_inputs`: mean and std over the catalogue's items that have the
modality, from the backbone as loaded, fixed for the run and saved with the weights), so at step 0 FFT,
Adapter (with zero-initialised up-projections) and LoRA embed an item exactly as ``frozen`` does with the
same head, up to the cache's fp16 rounding. A missing modality contributes zeros (the head masks its part,
as :class:`FrozenTower` does); the backbone is run on the present items only.

Preprocessed inputs
-------------------
Decoding video and audio at every step would dominate the step time, so each item's *preprocessed* model
inputs (token ids, pixel values, filterbanks) are computed once and kept in memory (up to
``<method>.input_memory_gb`` for all modalities together, filled in the order of ``modalities``), as IISAN's
research code reads preprocessed inputs. The backbone itself still runs at every step. Items beyond the
limit are preprocessed again at every use, inside the timed steps; :meth:`EndToEndTower.stats`
(results.json's ``tower.inputs``) counts those decodings per modality and the suite report flags such runs.
Variable-length inputs (text tokens) are stored unpadded and padded per batch exactly as the tokenizer pads
a batch. Pixel values are stored as one byte per value (:class:`Palette`): a processor resizes 8-bit images
and then rescales and normalises them, so each colour channel takes at most 256 distinct float values; the
byte indexes a per-channel table of those exact values, a quarter of float32's memory, read back bit for
bit. Inputs that are not of that kind (filterbanks, pixels resized in floating point) are kept as given.

Rows ``1..N`` are the catalogue records ``catalogue[item_ids[row]]``. Under ``torch.no_grad`` (evaluation)
the backbone runs in chunks of ``encoders.batch_size`` items; with gradients the batch's items run at once.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from crossan.encoders.base import ModalityEncoder, pool
from crossan.towers.base import ItemTower, TowerContext
from crossan.towers.content import Moments, check_kept, check_present
from crossan.towers.frozen import ModalityFusionHead

if TYPE_CHECKING:
    from crossan.config import TrainConfig
    from crossan.data.catalogue import Catalogue, ItemRecord
    from crossan.towers.options import EndToEndConfig

log = logging.getLogger("crossan")

LAYER_STACKS: tuple[str, ...] = ("layers", "encoder.layer", "encoder.layers")
"""Where the transformer layers of a backbone live (transformers 5: ``layers`` in ViT, AST and Whisper's
encoder; ``encoder.layer`` in BERT and VideoMAE, and in ViT/AST of transformers 4)."""


def layer_stack(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The backbone's ``nn.ModuleList`` of its ``num_layers`` transformer layers."""
    for path in LAYER_STACKS:
        try:
            stack = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(stack, nn.ModuleList) and len(stack) == num_layers:
            return stack
    raise ValueError(f"{type(model).__name__}: no list of {num_layers} layers at any of {list(LAYER_STACKS)}")


def layer_prefix(model: nn.Module, num_layers: int) -> str:
    """The dotted name of :func:`layer_stack` inside ``model``."""
    stack = layer_stack(model, num_layers)
    for name, module in model.named_modules():
        if module is stack:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def pooled_last_state(encoder: ModalityEncoder, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[B, D]`` float32: the encoder's pooling over ``hidden_states[L]`` (its last tap), with gradients."""
    hidden, mask = encoder.hidden_states(inputs)
    return pool(hidden[encoder.num_layers], encoder.pooling, mask).float()


# --------------------------------------------------------------------------------------------- inputs
def _seq_mask(inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The token mask of variable-length (text) inputs, or None for fixed-size inputs."""
    mask = inputs.get("attention_mask")
    return mask if mask is not None and "input_ids" in inputs else None


def _padding_side(encoder: ModalityEncoder) -> str:
    tok = getattr(encoder, "tokenizer", None)
    return str(getattr(tok, "padding_side", "right"))


def split_inputs(encoder: ModalityEncoder, inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A batch of model inputs → one dict per item (batch dimension 1); token inputs lose their padding."""
    n = len(next(iter(inputs.values())))
    mask = _seq_mask(inputs)
    left = _padding_side(encoder) == "left"
    out = []
    for i in range(n):
        item = {}
        length = int(mask[i].sum()) if mask is not None else None
        for k, v in inputs.items():
            x = v[i : i + 1]
            if length is not None and x.dim() >= 2 and x.shape[1] == mask.shape[1]:
                x = x[:, x.shape[1] - length :] if left else x[:, :length]
            item[k] = x.clone()
        out.append(item)
    return out


def collate_inputs(encoder: ModalityEncoder, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`split_inputs`: token inputs are padded to the longest item as the tokenizer pads."""
    left = _padding_side(encoder) == "left"
    tok = getattr(encoder, "tokenizer", None)
    out = {}
    for k in items[0]:
        parts = [it[k] for it in items]
        width = max(p.shape[1] for p in parts) if parts[0].dim() >= 2 else 0
        if parts[0].dim() >= 2 and any(p.shape[1] != width for p in parts):
            fill = int(getattr(tok, "pad_token_id", 0) or 0) if k == "input_ids" else 0
            padded = []
            for p in parts:
                pad = p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), fill)
                padded.append(torch.cat([pad, p] if left else [p, pad], 1))
            parts = padded
        out[k] = torch.cat(parts, 0)
    return out


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class Palette:
    """A float tensor ``[…, C, H, W]`` whose every channel (dim −3) holds at most 256 distinct values, as
    ``uint8`` codes ``[C, N]`` into a per-channel table ``[C, 256]`` of the values' exact bits (see the module
    docstring). :meth:`unpack` returns a tensor equal to the original bit for bit."""

    def __init__(self, codes: np.ndarray, table: np.ndarray, shape: torch.Size, dtype: torch.dtype) -> None:
        self.codes, self.table, self.shape, self.dtype = codes, table, shape, dtype

    @classmethod
    def pack(cls, t: torch.Tensor) -> Palette | torch.Tensor:
        """``t`` as a palette where it is one (and large enough to gain), else ``t`` itself."""
        if not t.is_floating_point() or t.dim() < 3 or t.element_size() not in _SAME_SIZE_INT:
            return t
        moved = t.detach().cpu().movedim(-3, 0).reshape(t.shape[-3], -1)
        channels = moved.view(_SAME_SIZE_INT[t.element_size()]).numpy()
        floats = moved.float().numpy()
        codes = np.empty(channels.shape, dtype=np.uint8)
        table = np.zeros((channels.shape[0], 256), dtype=channels.dtype)
        for c, values in enumerate(channels):
            got = _levels(floats[c], values) or _distinct(values)
            if got is None:
                return t
            codes[c], table[c] = got
        packed = cls(codes, table, t.shape, t.dtype)
        return packed if packed.nbytes < t.numel() * t.element_size() else t  # small inputs: the table outweighs

    def unpack(self) -> torch.Tensor:
        channels = np.stack([np.take(tab, code) for tab, code in zip(self.table, self.codes)])
        moved = (self.shape[-3], *self.shape[:-3], *self.shape[-2:])
        return torch.from_numpy(channels).view(self.dtype).view(moved).movedim(0, -3).contiguous()

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.table.nbytes)


def _levels(floats: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Fast path of :meth:`Palette.pack` for one channel: codes from evenly spaced levels (a processor's
    affine map of 8-bit pixels), guessed from a sample and then checked bit for bit against every value."""
    sample = np.unique(floats[::61])
    if len(sample) < 2 or not np.isfinite(sample).all():
        return None
    lo, step = floats.min(), np.diff(sample).min()
    if not np.isfinite(lo):
        return None
    levels = np.rint((floats - lo) / step)
    if levels.max() > 255:
        return None
    codes = levels.astype(np.uint8)
    table = np.zeros(256, dtype=bits.dtype)
    table[codes] = bits
    return (codes, table) if np.array_equal(table[codes], bits) else None


def _distinct(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Slow path of :meth:`Palette.pack`: the channel's distinct bit patterns, if at most 256."""
    distinct, inverse = np.unique(bits, return_inverse=True)  # by bits: exact, -0.0 kept apart from 0.0
    if len(distinct) > 256:
        return None
    table = np.zeros(256, dtype=bits.dtype)
    table[: len(distinct)] = distinct
    return inverse.reshape(-1).astype(np.uint8), table


def _stored_bytes(item: dict[str, torch.Tensor | Palette]) -> int:
    return sum(v.nbytes if isinstance(v, Palette) else v.numel() * v.element_size() for v in item.values())


class InputBudget:
    """The bytes of preprocessed inputs all modalities' memos may keep together (``input_memory_gb``)."""

    def __init__(self, limit_bytes: float) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit."""
        return self.used + size <= self.limit_bytes

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit."""
        if not self.fits(size):
            return False
        self.used += size
        return True


class InputMemo:
    """Per item row: its preprocessed inputs (or None where the item lacks the modality), kept in memory
    within a :class:`InputBudget` shared by the tower's modalities."""

    def __init__(self, encoder: ModalityEncoder, catalogue: Catalogue, item_ids: list[str], batch_size: int,
                 on_corrupt: str, budget: InputBudget) -> None:
        self.encoder = encoder
        self.catalogue = catalogue
        self.item_ids = item_ids
        self.batch_size = max(1, batch_size)
        self.on_corrupt = on_corrupt
        self.budget = budget
        self.present: dict[int, bool] = {}
        self.inputs: dict[int, dict[str, torch.Tensor | Palette]] = {}
        self.bytes = 0
        self.given_bytes = 0
        """What the kept inputs would take as the processors give them (float32 pixels)."""
        self.full = False
        """Set once an item did not fit in the budget."""
        self.decoded_in_training = 0
        """Items preprocessed by a training forward (gradients on; not :meth:`fill`): each is media decoding
        inside a timed step. Items not kept count at every use."""
        self.corrupt: dict[int, str] = {}
        """Rows whose media file was corrupt and, under ``on_corrupt='missing'``, count as lacking the modality
        (each logged once, naming item and path; counted in results.json: ``tower.inputs``)."""
        self._filling = False

    def fill(self, rows: list[int]) -> None:
        """Preprocess ``rows`` ahead of use, chunk by chunk, until the memory limit is reached."""
        self._filling = True
        try:
            for start in range(0, len(rows), self.batch_size):
                if self.full:
                    return
                self.get(rows[start : start + self.batch_size])
        finally:
            self._filling = False

    def stats(self) -> dict[str, Any]:
        """Items kept, their size, and the media decodings inside training steps (results.json)."""
        return {"items_kept": len(self.inputs), "items_present": sum(self.present.values()),
                "kept_mib": round(self.bytes / 2**20, 1), "unpacked_mib": round(self.given_bytes / 2**20, 1),
                "full": self.full,
                "decoded_in_training_steps": self.decoded_in_training,
                "corrupt_marked_missing": len(self.corrupt)}

    def get(self, rows: list[int]) -> tuple[list[dict[str, torch.Tensor] | None], list[bool]]:
        """Inputs and presence of each row (rows ≥ 1), preprocessing the rows not seen or not kept."""
        todo = [r for r in dict.fromkeys(rows) if r not in self.present or (self.present[r] and r not in self.inputs)]
        fresh: dict[int, dict[str, torch.Tensor]] = {}
        in_training = not self._filling and torch.is_grad_enabled()
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            records = [self.catalogue[self.item_ids[r]] for r in chunk]
            loaded = self.encoder.load_media(records, self.catalogue, self.on_corrupt)
            have = [r for r, p in zip(chunk, loaded.present) if p]
            if in_training:
                self.decoded_in_training += len(have)
            for r, p in zip(chunk, loaded.present):
                self.present[r] = p
            for r, err in zip(chunk, loaded.corrupt):
                if err is not None and r not in self.corrupt:  # on_corrupt=missing: said, as a cache build does
                    self.corrupt[r] = str(err)
                    log.warning("%s: corrupt, marked missing: %s", self.encoder.modality, err)
            if have:
                media = [m for m, p in zip(loaded.media, loaded.present) if p]
                for r, item in zip(have, split_inputs(self.encoder, self.encoder.process(media))):
                    fresh[r] = item
                    # packing costs time inside the steps (39 ms per paper-size clip): skip it for an item
                    # that cannot fit even at one byte per value (the least any stored form takes)
                    stored = ({k: Palette.pack(v) for k, v in item.items()}
                              if self.budget.fits(sum(v.numel() for v in item.values())) else None)
                    if stored is not None and self.budget.take(size := _stored_bytes(stored)):
                        self.inputs[r] = stored
                        self.bytes += size
                        self.given_bytes += _stored_bytes(item)  # type: ignore[arg-type]
                    else:
                        if not self.full:
                            log.warning("%s inputs: %s MiB kept (%s MiB for all modalities), the memory limit "
                                        "(input_memory_gb); items beyond it are decoded again at every use, "
                                        "inside the timed steps (counted in results.json: tower.inputs)",
                                        self.encoder.modality, f"{self.bytes / 2**20:,.0f}",
                                        f"{self.budget.used / 2**20:,.0f}")
                        self.full = True
        present = [self.present[r] for r in rows]
        got = {r: fresh.get(r) or self.unpack(r) for r, p in zip(rows, present) if p}
        return [got.get(r) for r in rows], present

    def unpack(self, row: int) -> dict[str, torch.Tensor]:
        return {k: v.unpack() if isinstance(v, Palette) else v for k, v in self.inputs[row].items()}


# --------------------------------------------------------------------------------------------- tower
CNN_FAMILIES = frozenset({"efficientnet"})
"""Encoder families without transformer layers: Adapter and LoRA have nothing to insert into or wrap."""

_NO_LAYERS_HINT = (". Adapter and LoRA need transformer layers, and EfficientNet (the `offline` preset's image and "
                   "video encoder) has none: use encoders.preset=offline-random (random-weights ViT/VideoMAE/AST) or "
                   "leave image and video out of modalities")


class EndToEndTower(ItemTower):
    """Backbones that train (or carry trainable modules) + :class:`ModalityFusionHead`.

    Subclasses set :attr:`method` and implement :meth:`adapt` (what of each backbone trains, and modules
    inserted into it) and :meth:`backbone_groups` (their optimiser groups); the head's group ``heads`` at
    ``train.lr`` is added here.
    """

    method: ClassVar[str] = ""

    def __init__(
        self,
        encoders: dict[str, ModalityEncoder],
        catalogue: Catalogue,
        item_ids: list[str],
        dim: int,
        options: EndToEndConfig,
        batch_size: int = 32,
        on_corrupt: str = "error",
    ) -> None:
        super().__init__()
        if not encoders:
            raise ValueError(f"method={self.method!r} needs at least one modality")
        self.modalities = list(encoders)
        self.options = options
        self.encoders = nn.ModuleDict(encoders)
        self.num_items, self.dim = len(item_ids) - 1, dim
        self.dims = {m: int(e.hidden_size) for m, e in encoders.items()}
        self.batch_size = batch_size
        self.item_ids = list(item_ids)
        budget = InputBudget(float(options.input_memory_gb) * 2**30)  # one limit for every modality
        self.memo = {m: InputMemo(e, catalogue, self.item_ids, batch_size, on_corrupt, budget)
                     for m, e in encoders.items()}
        if options.preprocess_upfront:
            t0 = time.perf_counter()
            for memo in self.memo.values():
                memo.fill(list(range(1, self.num_items + 1)))
            log.info("%s: preprocessed the inputs of %d items in %.1fs (%.2f GiB kept)", self.method, self.num_items,
                     time.perf_counter() - t0, sum(m.bytes for m in self.memo.values()) / 2**30)
        self.adapted: dict[str, Any] = {}
        """Per modality, what :meth:`adapt` returned (the method's record of what it made trainable)."""
        for m, e in encoders.items():
            e.model.requires_grad_(False)
            try:
                self.adapted[m] = self.adapt(m, e)
            except ValueError as err:
                raise ValueError(f"method={self.method}: the {m} encoder {e.name} ({e.family}) cannot be adapted: "
                                 f"{err}{_NO_LAYERS_HINT if e.family in CNN_FAMILIES else ''}") from None
            if options.gradient_checkpointing:
                enable_gradient_checkpointing(e)
        self.head = ModalityFusionHead(self.dims, dim)

    # ------------------------------------------------------------------ subclass hooks
    @abstractmethod
    def adapt(self, modality: str, encoder: ModalityEncoder) -> Any:
        """Make ``encoder``'s backbone trainable as the method prescribes (it arrives fully frozen); returns
        the method's record of it, kept in ``self.adapted[modality]`` (called from the base constructor, so
        a subclass keeps no state of its own here)."""

    @abstractmethod
    def backbone_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """Optimiser groups of the trainable parts inside the backbones."""

    # ------------------------------------------------------------------ interface
    def param_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        return [*self.backbone_groups(train), {"name": "heads", "params": list(self.head.parameters()), "lr": train.lr}]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        rows = [int(r) for r in items.detach().cpu().reshape(-1).tolist()]
        if rows and (min(rows) < 1 or max(rows) > self.num_items):
            raise IndexError(f"item rows must lie in 1..{self.num_items}, got {min(rows)}..{max(rows)}")
        pooled, present = [], []
        for m in self.modalities:
            h, p = self.encode_modality(m, rows, items.device)
            h = self.standardized_state(m, h, p)
            pooled.append(h)
            present.append(p)
        return self.head(pooled, torch.stack(present, 1))

    def encode_modality(self, modality: str, rows: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled last states ``[U, D_m]`` of ``rows`` (zeros where absent) and presence ``Bool[U]``."""
        encoder: ModalityEncoder = self.encoders[modality]  # type: ignore[assignment]
        inputs, present = self.memo[modality].get(rows)
        mask = torch.tensor(present, dtype=torch.bool, device=device)
        out = torch.zeros(len(rows), self.dims[modality], device=device)
        have = [i for i, p in enumerate(present) if p]
        if have:
            h = self.run_backbone(encoder, [inputs[i] for i in have])  # type: ignore[misc]
            out = out.index_copy(0, torch.tensor(have, device=device), h.to(device))
        elif torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters()):
            # no item of the batch has this modality: run one placeholder so that every trainable parameter
            # still takes part in the graph (DistributedDataParallel expects that); it adds exact zeros
            placeholder = split_inputs(encoder, encoder.process([encoder.placeholder()]))
            out = out + 0.0 * self.run_backbone(encoder, placeholder).sum().to(device)
        return out, mask

    @torch.no_grad()
    def embed_content(self, records: list[ItemRecord], catalogue: Catalogue,
                      on_corrupt: str | None = None) -> torch.Tensor:
        """Embed items that are not rows of this tower (cold start) from their raw content: the same
        preprocessing, the trained backbones and the trained head. ``[E, dim]``.

        Media are read and preprocessed ``batch_size`` items at a time (memory bounded by a chunk, whatever
        the number of records). ``on_corrupt``: what a corrupt media file does (``error`` | ``missing``, as
        ``cache.on_corrupt``); default: the policy the tower was built with for its training items."""
        device = next(self.parameters()).device
        if not records:
            return torch.zeros(0, self.dim, device=device)
        step = max(1, self.batch_size)
        return torch.cat([self._embed_chunk(records[i : i + step], catalogue, on_corrupt, device)
                          for i in range(0, len(records), step)])

    def _embed_chunk(self, records: list[ItemRecord], catalogue: Catalogue, on_corrupt: str | None,
                     device: torch.device) -> torch.Tensor:
        """:meth:`embed_content` of at most ``batch_size`` records."""
        pooled, present = [], []
        for m in self.modalities:
            out, mask = self._encode_records(m, records, catalogue, on_corrupt, device)
            pooled.append(self.standardized_state(m, out, mask))
            present.append(mask)
        mask = torch.stack(present, 1)
        unread = [r.item_id for r, seen in zip(records, mask.any(1).tolist()) if not seen]
        if unread:  # every file corrupt (marked missing): embedded from nothing, a constant vector
            from crossan.errors import UnreadableItemsError

            raise UnreadableItemsError(unread)
        return self.head(pooled, mask)

    def _encode_records(self, modality: str, records: list[ItemRecord], catalogue: Catalogue,
                        on_corrupt: str | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled last states ``[E, D_m]`` (zeros where absent) and presence of ``records``, read and
        preprocessed now (not through the memo)."""
        encoder: ModalityEncoder = self.encoders[modality]  # type: ignore[assignment]
        policy = on_corrupt if on_corrupt is not None else self.memo[modality].on_corrupt
        inputs, mask = encoder.prepare(records, catalogue, policy)
        items = split_inputs(encoder, inputs)
        out = torch.zeros(len(records), self.dims[modality], device=device)
        have = [i for i, p in enumerate(mask.tolist()) if p]
        if have:
            h = self.run_backbone(encoder, [items[i] for i in have])
            out = out.index_copy(0, torch.tensor(have, device=device), h.to(device))
        return out, mask.to(device)

    def run_backbone(self, encoder: ModalityEncoder, items: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        if torch.is_grad_enabled():
            return pooled_last_state(encoder, collate_inputs(encoder, items))
        step = max(1, self.batch_size)
        return torch.cat([pooled_last_state(encoder, collate_inputs(encoder, items[i : i + step]))
                          for i in range(0, len(items), step)])

    standardized: bool = False

    @torch.no_grad()
    def standardize_inputs(self, min_rel_std: float = 0.05) -> EndToEndTower:
        """Standardise each dimension of every modality's pooled last state before the head, as
        :meth:`ContentTower.standardize_inputs` does for the frozen-feature head: mean 0 and std 1 over the
        items that have the modality, dimensions that hardly vary set to zero (:func:`~crossan.towers.content.standardizer`).
        The statistics come from one pass of the backbones as loaded (evaluation mode, before any training
        step) and stay fixed while the backbones train; they are buffers, saved with the weights. The pass
        reads the inputs through the memo (filled already with ``preprocess_upfront``), else straight from
        the media without keeping them."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        rows = list(range(1, self.num_items + 1))
        step = max(1, self.batch_size)
        for m in self.modalities:
            moments = Moments(self.dims[m])
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                if self.options.preprocess_upfront:
                    h, present = self.encode_modality(m, chunk, device)
                else:
                    records = [self.memo[m].catalogue[self.item_ids[r]] for r in chunk]
                    h, present = self._encode_records(m, records, self.memo[m].catalogue, None, device)
                moments.add(h[present])
            check_present(moments.count, m, self.num_items)
            mean, inv_std = moments.standardizer(min_rel_std)
            check_kept(inv_std, m, min_rel_std, "pooled last-layer states the head reads")
            self.register_buffer(f"input_mean_{m}", mean.float().to(device))
            self.register_buffer(f"input_inv_std_{m}", inv_std.float().to(device))
        self.standardized = True
        self.train(was_training)
        return self

    def standardized_state(self, modality: str, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``h`` [U, D_m] standardised (when enabled), with absent rows exact zeros."""
        if not self.standardized:
            return h
        mean, inv_std = getattr(self, f"input_mean_{modality}"), getattr(self, f"input_inv_std_{modality}")
        return torch.where(present[:, None], (h - mean) * inv_std, torch.zeros_like(h))

    def stats(self) -> dict[str, Any]:
        """Per modality: the preprocessed inputs kept in memory and the media decodings that happened inside
        training steps (beyond ``input_memory_gb``, or with ``preprocess_upfront=false``): those steps' time
        includes decoding, which the suite report flags."""
        return {"inputs": {m: memo.stats() for m, memo in self.memo.items()}}

    def module_report(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for m, e in self.encoders.items():
            ps = list(e.parameters())
            out[f"encoders.{m}"] = {"trainable": sum(p.numel() for p in ps if p.requires_grad),
                                    "total": sum(p.numel() for p in ps)}
        ps = list(self.head.parameters())
        out["head"] = {"trainable": sum(p.numel() for p in ps if p.requires_grad), "total": sum(p.numel() for p in ps)}
        return out


def enable_gradient_checkpointing(encoder: ModalityEncoder) -> None:
    """Switch on the transformers model's (non-reentrant) activation checkpointing, where it supports it.

    transformers 5 names it ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` is its
    deprecated alias, the only name in 4.x). It acts in training mode only.
    """
    model = encoder.model
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{encoder.name} ({type(model).__name__}) does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build_endtoend(cls: type[EndToEndTower], ctx: TowerContext) -> EndToEndTower:
    """Build ``cls`` over ``ctx.config.modalities`` with encoders resolved from ``ctx.config.encoders``."""
    from crossan.encoders.factory import build_encoders

    cfg = ctx.config
    if ctx.catalogue is None:
        raise ValueError(f"method={cls.method!r} runs the encoders on raw item content: it needs the catalogue")
    encoders = build_encoders(cfg, cfg.modalities, ctx.device)
    tower = cls(encoders, ctx.catalogue, ctx.item_ids, cfg.user.dim, getattr(cfg, cls.method),
                batch_size=cfg.encoders.batch_size, on_corrupt=cfg.cache.on_corrupt)
    if cfg.cache.standardize:  # the frozen-feature head's input treatment (docs/method.md §3, our decision)
        tower.standardize_inputs(min_rel_std=cfg.cache.standardize_min_rel_std)
    return tower
