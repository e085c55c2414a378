"""Common plumbing of the towers that read frozen-encoder states: frozen features, IISAN and CROSSAN.

Contract with the trainer
-------------------------
The builder of each content tower takes its :class:`~crossan.cache.features.FeatureSource` from
``ctx.features``: the cached ``TensorFeatures`` or the live encoders, whichever the run uses (the tower
reads both through ``gather``; its fast training paths read the cached arrays directly when the source is a
``TensorFeatures``). The source must hold every modality
of ``ctx.config.modalities`` (it may hold more) and answer ``gather(items)`` on ``items.device``.
The source is *not* a submodule of the tower: its (frozen) weights are neither trained, moved by
``tower.to(...)``, nor saved in the tower's ``state_dict``.

Missing modalities
------------------
``gather`` marks an item lacking modality m with ``present = False``. :meth:`ContentTower.side_inputs`
replaces such states by exact zeros before any network sees them, so whatever the source stores for a
missing modality can never reach an output; each tower then states its own rule (see its docstring).

Precision
---------
:meth:`ContentTower.forward` gathers the states under the autocast of :attr:`ContentTower.precision`
(``precision`` of the run config, set by :func:`finish`; ``fp32`` for a tower built directly), so live
encoders run at the precision the cache is built with, in training, evaluation and serving alike. The
side network itself computes in the dtype of the surrounding autocast: bf16 inside a training step of
:class:`~crossan.recommender.Recommender` (which enters it), float32 in ``embed_all`` (evaluation,
serving); see :mod:`crossan.precision`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from crossan.cache.features import FeatureSource
from crossan.config import TrainConfig
from crossan.errors import ConfigError
from crossan.precision import autocast
from crossan.towers.base import ItemTower, TowerContext
from crossan.towers.sanb import ModalityProjection, branch_masks

FP16_NOISE_STEPS = 16
"""Input standardisation zeroes a dimension whose std over the items is under this many fp16 steps at its
magnitude (``max(rms · 2^-10, 2^-24)``): a spread of a few float16 values is the cache's rounding, not a
signal (e.g. a MiniLM dimension holding only the subnormals ±6e-8)."""

FEATURES_KEY = "features"
"""The older ``TowerContext.extras`` key of the FeatureSource (now the field ``TowerContext.features``)."""

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]
"""What ``FeatureSource.gather`` returns: modality → (states [U, K, D_m], present Bool[U])."""


def finish(tower: ContentTower, ctx: TowerContext) -> ContentTower:
    """Apply the run-level options to a freshly built content tower (``cache.standardize``, ``precision``)."""
    tower.precision = ctx.config.precision
    tower.train_table = ctx.config.cache.train_table
    tower.compile = ctx.config.train.compile is True  # "auto" is resolved by the trainer (auto_compile)
    if tower.compile and torch.device(ctx.device).type == "cpu":
        from crossan.utils import require_cpp_compiler

        require_cpp_compiler("train.compile")
    if not ctx.config.cache.standardize:
        return tower
    return tower.standardize_inputs(min_rel_std=ctx.config.cache.standardize_min_rel_std, device=ctx.device)


def standardizer(total: torch.Tensor, squares: torch.Tensor, count: int,
                 min_rel_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, inv_std)`` of states ``[..., D]`` from their sum and sum of squares over ``count`` items
    (float64). A dimension that hardly varies over the items (std under ``min_rel_std`` of its own RMS: e.g.
    a CLS token at the embedding layer) carries no signal, and scaling it up would only amplify fp16 rounding
    noise: its ``inv_std`` is 0. So is a dimension whose std is under :data:`FP16_NOISE_STEPS` float16 steps
    at its magnitude (values around 0 in the subnormal range pass the relative test). ``min_rel_std`` = 0
    keeps every dimension that varies at all."""
    n = max(1, count)
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0).sqrt()
    rms = (squares / n).sqrt()
    keep = std > min_rel_std * rms
    if min_rel_std > 0:  # 0: keep every dimension that varies at all (cache.standardize_min_rel_std=0)
        keep &= std > FP16_NOISE_STEPS * (rms * 2.0**-10).clamp_min(2.0**-24)
    return mean, torch.where(keep, 1.0 / std.clamp_min(1e-12), torch.zeros_like(std))


def check_present(count: int, modality: str, num_items: int) -> None:
    """:class:`ConfigError` when no item had ``modality``'s content in the standardisation pass (every file
    missing, or corrupt under ``cache.on_corrupt=missing``): the modality would reach the method as zeros."""
    if count == 0:
        raise ConfigError(f"modality {modality}: none of the {num_items:,} items has {modality} content (every file "
                          "missing, or corrupt under cache.on_corrupt=missing); fix the files, or leave "
                          f"{modality} out of the modalities")


def check_kept(inv_std: torch.Tensor, modality: str, min_rel_std: float, what: str) -> None:
    """:class:`ConfigError` when standardisation keeps no dimension of the states a method reads for
    ``modality`` (``inv_std`` of those states, ``what`` names them): the modality would reach the method as
    zeros, every item alike, and the run would train and rank on nothing from it without a word."""
    if bool((inv_std > 0).any()):
        return
    why = (f"in every dimension they vary over the items by less than {min_rel_std:g} of their RMS "
           "(cache.standardize_min_rel_std) or by less than float16 rounding, so each would be set to 0"
           if min_rel_std > 0 else
           "they are the same for every item")
    raise ConfigError(
        f"{modality}: standardisation keeps no dimension of the {what}: {why}, and {modality} would carry "
        f"nothing. Check the encoder (encoders.{modality}.model: e.g. a final LayerNorm or a random model can "
        "make every item's state alike), set cache.standardize_min_rel_std=0 to keep every dimension that "
        "varies, or leave the modality out")


class Moments:
    """Sum and sum of squares (float64, on the CPU) of states ``[..., D]`` over the items added, for
    :func:`standardizer` (the content towers' and the end-to-end heads' statistics)."""

    def __init__(self, *shape: int) -> None:
        self.total = torch.zeros(*shape, dtype=torch.float64)
        self.squares = torch.zeros_like(self.total)
        self.count = 0

    def add(self, states: torch.Tensor) -> None:
        """Add items ``[U, ..., D]``."""
        x = states.detach().double().cpu()
        self.total += x.sum(0)
        self.squares += (x * x).sum(0)
        self.count += len(x)

    def standardizer(self, min_rel_std: float) -> tuple[torch.Tensor, torch.Tensor]:
        return standardizer(self.total, self.squares, self.count, min_rel_std)


def features_from_context(ctx: TowerContext) -> FeatureSource:
    """The FeatureSource the model builder put in ``ctx.features`` (the tower's constructor checks that it
    holds the run's modalities)."""
    if ctx.features is None:
        raise ValueError(f"method={ctx.config.method!r} reads frozen-encoder states: pass a FeatureSource as "
                         "TowerContext.features")
    return ctx.features


class ContentTower(ItemTower):
    """An item tower over the tapped states of ``modalities``: ``forward(items) = encode(gather(items))``."""

    def __init__(self, features: FeatureSource, modalities: list[str], num_items: int, dim: int) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("a content tower needs at least one modality")
        missing = [m for m in modalities if m not in features.modalities]
        if missing:
            raise ValueError(f"the feature source has no {missing} (it holds {features.modalities})")
        object.__setattr__(self, "features", features)  # not a submodule (see the module docstring)
        self.modalities = list(modalities)
        self.num_items, self.dim = num_items, dim
        self.dims = {m: int(features.dims[m]) for m in self.modalities}
        self.num_taps = int(features.num_taps)

    features: FeatureSource
    precision: str = "fp32"
    """``auto`` | ``bf16`` | ``fp32``: the autocast the states are gathered under (see the module docstring)."""

    train_table: bool = False
    """Read training batches' side inputs from :meth:`side_table` (``cache.train_table``; set by :func:`finish`)."""

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # the table is in the dtype the side network computes in here (the caller's autocast: bf16 inside a
        # training step of Recommender), not the dtype the states are gathered in
        table = self.side_table(items.device) if self.train_table and self.training else None
        if table is not None:  # one index_select per (tap, modality) gives the tap-major inputs
            flat = items.reshape(-1).to(table.device)
            present = torch.stack([self.features._present[m].to(table.device)[flat] for m in self.modalities], 1)
            return self.encode(PreparedInputs(take_rows(table, flat), present))
        prepared = self._tap_major_from_memory(items) if self.reads_tap_major else None
        if prepared is not None:
            return self.encode(prepared)
        with autocast(self.precision, items.device):
            feats = self.features.gather(items)
        return self.encode(feats)

    def side_table(self, device: torch.device) -> torch.Tensor | None:
        """The standardised side inputs of every item (row 0, the padding item, included) as one tensor
        ``[K, M, N + 1, d_s]`` in the compute dtype, built on first use and rebuilt whenever the dtype, the
        device or the standardisation statistics change (e.g. after ``load_state_dict``); ``None`` where it
        does not apply: towers that do not read :meth:`tap_major_inputs`, modalities that need a projection,
        a memory-mapped or live feature source, or float32 compute (the table would then take twice the
        cache's memory, and evaluation, which is float32, keeps reading the cache).

        Built with the very code a batch would run (:meth:`FeatureSource.gather`, then
        :meth:`_standardize_into`), chunk by chunk, so a training step sees bit-identical inputs with or
        without it; it only moves that work out of the step (gather, fp16 → fp32 cast, standardisation and
        the strided write into the tap-major layout: 5.85 of about 70 ms of a one-thread CROSSAN M = 2 step at
        paper sizes, results §3d). Off by default (``cache.train_table``): it takes as much memory again as
        the cached states it is built from, and since batches read an in-memory cache block by block
        (:meth:`_tap_major_from_memory`) it is no faster than that (results §3g).
        """
        dtype = compute_dtype_now(device)
        states = self._unprojected_memory_states(device)
        if not self.reads_tap_major or dtype == torch.float32 or states is None:
            return None
        src = self.features
        stats = tuple((t.data_ptr(), t._version) for m in self.modalities if self.standardized
                      for t in (getattr(self, f"input_mean_{m}"), getattr(self, f"input_inv_std_{m}")))
        key = (dtype, device, id(src), tuple((states[m].data_ptr(), states[m]._version) for m in self.modalities),
               stats)
        cached = self.__dict__.get("_side_table")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__.pop("_side_table", None)  # free the stale table before building the new one
        K, M, N, d = self.num_taps, len(self.modalities), self.num_items + 1, self.dims[self.modalities[0]]
        table = torch.empty(K, M, N, d, dtype=dtype, device=device)
        with torch.no_grad():
            for chunk in torch.arange(N, device=device).split(4096):
                with autocast(self.precision, device):
                    feats = src.gather(chunk)
                for i, m in enumerate(self.modalities):
                    s, p = feats[m]
                    self._standardize_into(m, s, p.to(device=s.device, dtype=torch.bool),
                                           table[:, i, int(chunk[0]):int(chunk[-1]) + 1].transpose(0, 1))
        self.__dict__["_side_table"] = (key, table)
        return table

    def _unprojected_memory_states(self, device: torch.device) -> dict[str, torch.Tensor] | None:
        """The cached states of every modality when they are torch tensors in memory on ``device`` and the
        side inputs are those states themselves (no modality needs a projection, all have one width), so that
        they can be standardised straight into the tap-major layout; ``None`` otherwise (memory-mapped or live
        sources, projected modalities)."""
        states = getattr(self.features, "_states", None)
        if states is None or not all(isinstance(states[m], torch.Tensor) and states[m].device == device
                                     for m in self.modalities):
            return None
        proj = getattr(self, "proj", None)
        if not isinstance(proj, ModalityProjection) or any(
                not isinstance(proj.proj[m], torch.nn.Identity) for m in self.modalities):
            return None  # the tap-major inputs are projected states
        if len({self.dims[m] for m in self.modalities}) != 1:
            return None
        return states

    def _tap_major_from_memory(self, items: torch.Tensor) -> PreparedInputs | None:
        """The tap-major side inputs of ``items`` read straight from an in-memory cache on a CPU, or ``None``
        where this does not apply (other devices, and the cases of :meth:`side_table`, float32 compute excepted).

        The same numbers as :meth:`FeatureSource.gather` followed by :meth:`tap_major_inputs` (a test checks
        them bit for bit), but one (tap, modality) block at a time through a small float32 scratch buffer:
        the gather's fp16 → fp32 copy of every row and an ``addcmul`` that writes a strided tensor of another
        dtype (which torch runs through full-size temporaries) cost 2–7 ms of a CROSSAN M = 2 training step on
        the 2-core CPU and about 10% more memory above the cache (results §3g).
        """
        states = self._unprojected_memory_states(items.device)
        if items.device.type != "cpu" or states is None:
            return None  # on a GPU, K·M small blocks would be K·M·3 kernel launches: it keeps the whole-row path
        src = self.features
        flat = items.reshape(-1)
        K, M, U, d = self.num_taps, len(self.modalities), flat.numel(), self.dims[self.modalities[0]]
        dtype = compute_dtype_now(items.device)
        H = torch.empty(K, M, U, d, dtype=dtype, device=items.device)
        scratch = torch.empty(U, d, device=items.device) if dtype != torch.float32 else None
        present = []
        with torch.no_grad():
            for i, m in enumerate(self.modalities):
                rows = states[m].index_select(0, flat)  # [U, K, d] in the cache's dtype
                if self.standardized:
                    inv_std = getattr(self, f"input_inv_std_{m}")
                    shift = -getattr(self, f"input_mean_{m}") * inv_std
                for k in range(K):
                    if not self.standardized:
                        H[k, i].copy_(rows[:, k])  # fp16 → fp32 is exact: the same as casting twice
                    elif scratch is None:
                        torch.addcmul(shift[k], rows[:, k].float(), inv_std[k], out=H[k, i])
                    else:
                        scratch.copy_(rows[:, k])
                        torch.addcmul(shift[k], scratch, inv_std[k], out=scratch)
                        H[k, i].copy_(scratch)
                p = src._present[m].to(items.device)[flat]
                missing = (~p).nonzero()[:, 0]
                if len(missing):
                    H[:, i].index_fill_(1, missing, 0.0)
                present.append(p)
        return PreparedInputs(H, torch.stack(present, 1))

    compile: bool = False
    """Run the side network through ``torch.compile`` while training on a CPU (``train.compile``; set by
    :func:`finish`, and by the trainer where ``auto`` resolves to on: :func:`auto_compile`). See
    :meth:`side_step`."""

    compilable: bool = False
    """Whether :meth:`encode` runs its side network through :meth:`side_step` (IISAN, CROSSAN), so that
    :attr:`compile` changes anything."""

    def compiled_on(self, device: torch.device | str) -> bool:
        """Whether training on ``device`` runs the side network compiled: :attr:`compile` is on, the tower has
        one to compile (:attr:`compilable`) and ``device`` is a CPU."""
        return self.compile and self.compilable and torch.device(device).type == "cpu"

    def compiles(self, h: torch.Tensor) -> bool:
        """Whether this forward runs the side network compiled: :attr:`compile` is on and the step trains on
        a CPU (gradients on); evaluation, serving and other devices run it eagerly."""
        return self.compile and self.training and torch.is_grad_enabled() and h.device.type == "cpu"

    def side_step(self, fn: Callable[..., torch.Tensor], h: torch.Tensor) -> Callable[..., torch.Tensor]:
        """``fn`` (a side network's chains through every depth, a function of tensors only), compiled where
        :meth:`compiles`, ``fn`` itself otherwise. One compiled graph with dynamic shapes serves every batch
        and tower of the process (:func:`compiled`)."""
        return compiled(fn) if self.compiles(h) else fn

    def branch_masks(self, chains: int, h: torch.Tensor, p: float) -> tuple[list[torch.Tensor | None], float]:
        """Each depth's SANB keep mask [chains, U, d_s] for side inputs ``h`` [K, M, U, d_s] and their scale
        (:func:`~crossan.towers.sanb.branch_masks`): the masks the blocks drew depth by depth before they became
        one function, made side by side on a CPU. One mask per depth rather than one for all: on a CPU an
        allocation above glibc's 32 MiB mmap ceiling (IISAN's ten chains at M = 4) is fresh pages at every step
        unless freed memory is retained (``train.malloc``)."""
        return branch_masks(self.num_taps, (chains, *h.shape[2:]), h.dtype, p, self.training, h.device)

    def sanb_weights(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each depth's grouped SANB weights (down weight, down bias, up weight, up bias), for
        :func:`~crossan.towers.sanb.sanb_step`."""
        return [(b.down_weight, b.down_bias, b.up_weight, b.up_bias) for b in self.adapters]

    reads_tap_major: bool = False
    """True for towers whose side networks read :meth:`tap_major_inputs` (IISAN, CROSSAN)."""

    @abstractmethod
    def encode(self, feats: Features) -> torch.Tensor:
        """Gathered states → item embeddings [U, dim]."""

    def standardize_inputs(self, batch_size: int = 1024, min_rel_std: float = 0.05,
                           device: torch.device | str = "cpu") -> ContentTower:
        """Standardise every tapped state dimension over the catalogue (mean 0, std 1 over the items that
        have the modality), with statistics fixed at build time and saved with the weights.

        Frozen encoders' pooled states are often nearly identical across items (a CLS token at the embedding
        layer is the same vector for every item; randomly initialised encoders give cosine similarities near
        1), so the differences that carry the signal are tiny next to a shared offset. Removing the offset
        lets the side network learn from the first step. One pass over all items through the feature source
        (cheap for the cache; a full encoding pass for live encoders). ``device``: the run's, where live
        encoders compute (its kind of autocast is the one the forward runs under).
        """
        moments = {m: Moments(self.num_taps, self.dims[m]) for m in self.modalities}
        with torch.no_grad():
            for chunk in torch.arange(1, self.num_items + 1).split(batch_size):
                # under the autocast every later gather runs under (forward, on the run's device): live
                # encoders then give the statistics of the states the network reads (bf16 ones under bf16;
                # a CPU autocast would leave live encoders on a GPU in fp32)
                with autocast(self.precision, device):
                    feats = self.features.gather(chunk)
                for m in self.modalities:
                    s, p = feats[m]
                    moments[m].add(s[p.to(s.device)])
        for m in self.modalities:
            check_present(moments[m].count, m, self.num_items)
            mean, inv_std = moments[m].standardizer(min_rel_std)
            check_kept(inv_std[self.input_taps], m, min_rel_std, self.input_taps_text)
            self.register_buffer(f"input_mean_{m}", mean.float())
            self.register_buffer(f"input_inv_std_{m}", inv_std.float())
        self.standardized = True
        return self

    standardized: bool = False
    input_taps: slice = slice(None)
    """The taps :meth:`encode` reads (the frozen-feature head: the last only)."""
    input_taps_text: str = "tapped states"

    def side_inputs(self, feats: Features, taps: slice = slice(None),
                    dtype: torch.dtype | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per modality (in ``self.modalities`` order) its states [U, K, D_m] (standardised when enabled)
        with missing rows set to exact zeros, and the presence mask stacked as Bool[U, M]. ``taps`` keeps
        only some taps (e.g. ``slice(-1, None)``: the last), before any work is done on the others;
        ``dtype``: the states' dtype (default: the compute dtype, see :func:`compute_dtype_now`).

        The states are constants of the training graph (frozen encoders, read under no-grad), so this runs
        without autograd: one fused pass per modality (``x · inv_std − mean · inv_std``, in float32 whatever
        ``dtype``: the mean is large next to the differences that carry the signal) and a fill of the
        missing rows.
        """
        states, present = [], []
        with torch.no_grad():
            for m in self.modalities:
                s, p = feats[m]
                p = p.to(device=s.device, dtype=torch.bool)
                out = torch.empty(s[:, taps].shape, dtype=dtype or compute_dtype_now(s.device), device=s.device)
                states.append(self._standardize_into(m, s, p, out, taps))
                present.append(p)
        return states, torch.stack(present, 1)

    def _standardize_into(self, m: str, s: torch.Tensor, present: torch.Tensor, out: torch.Tensor,
                          taps: slice = slice(None)) -> torch.Tensor:
        """Write modality ``m``'s states ``s`` [U, K, D_m] (taps ``taps``), standardised when enabled, into
        ``out`` (any dtype and strides: the cast and the layout change ride on the one pass), and zero the
        rows of missing items. No autograd.

        The missing rows are found with ``nonzero`` on a CPU (only they are written) and zeroed by one masked
        pass elsewhere: on a GPU ``nonzero`` waits for the device, once per modality of every training step
        (the same zeros either way)."""
        s = s[:, taps]
        if self.standardized:
            inv_std = getattr(self, f"input_inv_std_{m}")[taps]
            torch.addcmul(-getattr(self, f"input_mean_{m}")[taps] * inv_std, s, inv_std, out=out)
        else:
            out.copy_(s)
        if out.device.type != "cpu":
            return out.masked_fill_(~present.view(-1, *[1] * (out.dim() - 1)), 0.0)
        return out.index_fill_(0, (~present).nonzero()[:, 0], 0.0)

    def tap_major_inputs(self, feats: Features, proj: ModalityProjection) -> tuple[torch.Tensor, torch.Tensor]:
        """All modalities' side inputs as one tensor ``H`` [K, M, U, d_s] (after ``proj``) in the compute dtype
        (:func:`compute_dtype_now`), and presence Bool[U, M]. Tap-major, so that depth k of a side network
        reads one contiguous block ``H[k]`` holding every modality: the layout the grouped blocks of
        :mod:`crossan.towers.sanb` take.

        Where no modality needs a projection (every D_m = d_s, as at paper sizes) each modality's states are
        standardised straight into their slot of ``H`` (one pass per modality, cast included); otherwise
        the projected states are stacked (one more copy).
        """
        if isinstance(feats, PreparedInputs):
            return feats.tap_major, feats.present
        if any(not isinstance(proj.proj[m], torch.nn.Identity) for m in self.modalities):
            states, present = self.side_inputs(feats)
            # stacking the [K, U, d_s] views along dim 1 writes the tap-major tensor in one copy
            return torch.stack([proj(m, s).transpose(0, 1) for m, s in zip(self.modalities, states)], 1), present
        first = feats[self.modalities[0]][0]
        U, K, d = first.shape
        H = torch.empty(K, len(self.modalities), U, d, dtype=compute_dtype_now(first.device), device=first.device)
        present = []
        with torch.no_grad():
            for i, m in enumerate(self.modalities):
                s, p = feats[m]
                p = p.to(device=s.device, dtype=torch.bool)
                self._standardize_into(m, s, p, H[:, i].transpose(0, 1))
                present.append(p)
        return H, torch.stack(present, 1)


_COMPILED: dict[Callable[..., torch.Tensor], Callable[..., torch.Tensor]] = {}

COMPILE_AUTO_MIN_STEPS = 10_000
"""``train.compile=auto`` compiles a side network whose run takes at least this many training steps (the
fewest its epochs and early stopping allow). Compilation took 10–45 s per process on the CPUs measured
(docs/results.md §3g, §3u), under 5 ms a step at this count, against steps of 30–200 ms that it made up to 24%
faster."""


def fewest_training_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    """The fewest training steps a run of ``train`` takes at ``steps_per_epoch`` (after
    ``max_steps_per_epoch``): ``epochs``, or fewer where early stopping can end it — the first validation is
    the best so far, ``patience`` more without improvement stop it, one every ``eval_every`` epochs."""
    if train.epochs <= 0 or train.patience <= 0:
        return 0
    return min(train.epochs, (train.patience + 1) * max(1, train.eval_every)) * steps_per_epoch


def auto_compile(tower: nn.Module, device: torch.device | str, fewest_steps: int) -> tuple[bool, str]:
    """What ``train.compile=auto`` resolves to for ``tower`` trained on ``device`` in at least ``fewest_steps``
    steps (:func:`fewest_training_steps`), and why, for the log: on where the tower has a side network to
    compile (:attr:`ContentTower.compilable`), it trains on a CPU, the run is long enough
    (:data:`COMPILE_AUTO_MIN_STEPS`) and a C++ compiler is there for inductor."""
    from crossan.utils import cpp_compiler_problem

    if not getattr(tower, "compilable", False):
        return False, "this method has no compiled side network"
    if torch.device(device).type != "cpu":
        return False, f"training on {torch.device(device).type} (compiled on CPUs only)"
    if fewest_steps < COMPILE_AUTO_MIN_STEPS:
        return False, (f"the run may take as few as {fewest_steps:,} steps, under {COMPILE_AUTO_MIN_STEPS:,}: "
                       "compiling would not repay its time")
    problem = cpp_compiler_problem()
    if problem is not None:
        return False, f"no C++ compiler for inductor ({problem})"
    return True, f"at least {fewest_steps:,} training steps on a CPU"


def compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``torch.compile(fn, dynamic=True)``, made once per function and process (inductor's code is cached
    on disk too, so a later process compiles faster)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


def take_rows(table: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``table[:, :, items]`` for a table [K, M, N, d]: one ``index_select`` along dim 0 per (tap, modality)
    slice, written straight into the output (on a CPU about 5x faster than ``index_select`` along dim 2)."""
    K, M, N, d = table.shape
    out = torch.empty(K, M, len(items), d, dtype=table.dtype, device=table.device)
    flat_out, flat_table = out.view(K * M, len(items), d), table.view(K * M, N, d)
    for j in range(K * M):
        torch.index_select(flat_table[j], 0, items, out=flat_out[j])
    return out


class PreparedInputs(dict):
    """A batch's side inputs already in the tap-major layout (from :meth:`ContentTower.side_table`):
    ``tap_major`` [K, M, U, d_s] and ``present`` Bool[U, M]; :meth:`ContentTower.tap_major_inputs` passes
    them through. An empty mapping, so code that expects gathered :data:`Features` finds no modality."""

    def __init__(self, tap_major: torch.Tensor, present: torch.Tensor) -> None:
        super().__init__()
        self.tap_major, self.present = tap_major, present


def compute_dtype_now(device: torch.device) -> torch.dtype:
    """The dtype the side networks compute in here and now: autocast's dtype for ``device`` where autocast
    is on (see :mod:`crossan.precision`), float32 otherwise."""
    kind = device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.float32
