"""The common interface of the frozen per-modality encoders (METHOD.md §3).

A :class:`ModalityEncoder` wraps one transformers backbone (``.model``, family ``.family``) and turns
:class:`ItemRecord` s into pooled per-layer states:

``prepare(records, catalogue) -> (inputs, present)``
    loads the media and runs the model's tokenizer / image processor / feature extractor. Items without
    the modality (no file, empty text) get a valid placeholder input and ``present = False``.
``forward(inputs) -> [B, K, D]``
    runs the backbone with ``output_hidden_states=True`` and pools the hidden states at the K taps.
``encode(records, catalogue) -> EncodedBatch``
    both, under ``no_grad``, running the backbone on the present items only; absent rows are zeros.

Hidden state ``0`` is the embedding output and ``l`` the output of layer ``l`` — as transformers returns
them in ``hidden_states`` (so for ViT the last tap is *before* the final LayerNorm; for Whisper's encoder
it is after it, since that is what its last hidden state is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import MediaError, MediaMemoryError
from crossan.encoders.backbones import (
    DEFAULT_POOLING,
    BackboneInfo,
    config_digest,
    load_backbone,
    preprocessor_digest,
    weights_digest,
)

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord

POOL_MASK = "pool_mask"
"""Key of ``inputs`` holding the mask of tokens to average (not passed to the model)."""

AST_PADDING = "zero fbank frames"
"""The AST preprocessing marker in cache manifests: a clip shorter than the model's ``max_length`` frames is
padded with zero filterbank frames (``ASTFeatureExtractor``), not with silent samples."""


def tap_indices(num_layers: int, num_taps: int) -> list[int]:
    """K evenly spaced hidden-state indices over ``0..num_layers``, including both ends.

    ``round(i · L / (K − 1))`` for i < K (halves round up), so L = 12, K = 7 gives 0, 2, …, 12. A model
    shallower than K − 1 layers repeats indices, keeping K the same for every depth. K = 1 taps the last
    layer only.
    """
    if num_layers < 0 or num_taps < 1:
        raise ValueError(f"need num_layers >= 0 and num_taps >= 1, got {num_layers} and {num_taps}")
    if num_taps == 1:
        return [num_layers]
    k = num_taps - 1
    return [(2 * i * num_layers + k) // (2 * k) for i in range(num_taps)]


def resolve_pooling(pooling: str, family: str) -> str:
    """``auto`` → the family's default (CLS for bert/vit/ast, mean for videomae/whisper)."""
    if pooling == "auto":
        return DEFAULT_POOLING[family]
    if pooling not in ("cls", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}; expected auto, cls or mean")
    return pooling


def pool(hidden: torch.Tensor, pooling: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, D]`` → ``[B, D]``: token 0 (``cls``) or the mean over tokens where ``mask`` is true."""
    if pooling == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


@dataclass
class LoadedMedia:
    """Raw media of a batch of records, before the processor."""

    media: list[Any]
    """Per record: the loaded media, or None where the item is absent (see ``present``)."""
    present: list[bool]
    corrupt: list[MediaError | None]
    """Per record: the read error of a corrupt file that was marked missing (``on_corrupt='missing'``)."""


@dataclass
class EncodedBatch:
    """Pooled tapped states of a batch of records."""

    states: torch.Tensor
    """float32 ``[B, K, D]`` (zeros where absent)."""
    present: torch.Tensor
    """bool ``[B]``."""
    corrupt: list[MediaError | None]


class ModalityEncoder(nn.Module):
    """A frozen backbone for one modality with its preprocessing, taps and pooling."""

    modality: ClassVar[str] = ""
    per_item_inputs: ClassVar[bool] = False
    """Whether :meth:`process` treats each item alone (``process(a + b)`` is ``process(a)`` and ``process(b)``
    concatenated, bit for bit): then :meth:`load_inputs` processes each item as soon as it is decoded and
    keeps none of the decoded media, so a batch holds one item's full-size frames at a time, not all of them
    (a batch of three 8192² clips took 3.5 GB). Not for processors that pad a batch to its longest item."""

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__()
        self.info = info
        self.spec = spec
        self.name: str = info.name
        """Checkpoint name, folder or config spec."""
        self.family: str = info.family
        """bert | vit | videomae | ast | whisper."""
        self.random_init: bool = info.random_init
        """True when the weights are random (a ``config:`` spec), not a pretrained checkpoint."""
        self.model: nn.Module = model if model is not None else load_backbone(info)
        self.num_layers: int = info.num_layers
        self.hidden_size: int = info.hidden_size
        self.taps: list[int] = tap_indices(self.num_layers, spec.num_taps)
        self.num_taps: int = len(self.taps)
        self.pooling: str = resolve_pooling(spec.pooling, info.family)
        self.model_kwargs: dict[str, Any] = {}
        """Extra keyword arguments of every model call (e.g. ``interpolate_pos_encoding``)."""

    # ------------------------------------------------------------------ modality hooks
    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        """Load the raw media of a record that has this modality; raises :class:`MediaError`."""
        raise NotImplementedError

    def placeholder(self) -> Any:
        """Media standing in for an absent item (a valid processor input)."""
        raise NotImplementedError

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        """Run the tokenizer / processor on a non-empty list of media."""
        raise NotImplementedError

    def stage(self, item: Any) -> Any:
        """Where :attr:`per_item_inputs`: the first part of :meth:`process` for one decoded item, run in the
        cache builder's reading thread as soon as the item is read; :meth:`finish` does the rest for the
        batch, so that ``finish([stage(m) for m in media])`` is ``process(media)`` bit for bit. By default
        the whole of ``process([item])``. The pixel encoders override both: uint8 resizes with Pillow and
        numpy here, the normalisation in :meth:`finish`, which for cover images runs in the model's thread
        (:attr:`finish_in_model_thread`) so that the reading thread runs no torch operation: one there makes
        libgomp (torch's OpenMP) manage more threads than there are cores, and from then on it all but stops
        spin-waiting between parallel regions in every thread, the forward's included (docs/results.md §3w)."""
        return self.process([item])

    def finish(self, staged: list[Any]) -> dict[str, torch.Tensor]:
        """Model inputs from a non-empty list of :meth:`stage` results (by default: their concatenation)."""
        return {k: torch.cat([part[k] for part in staged]) for k in staged[0]}

    def _overrides_process(self, owner: type) -> bool:
        """Whether a subclass overrides ``owner``'s :meth:`process` (where ``owner`` stages and finishes in its
        own way): then the defaults apply, so that the cache builder runs the subclass's ``process``."""
        return type(self).process is not owner.process

    @property
    def finish_in_model_thread(self) -> bool:
        """Where the cache builder runs :meth:`finish`: in the model's thread (True: for a :meth:`stage` that
        runs no torch operation, so that the reading thread runs none) or in the reading thread, with the rest
        of the batch's processing (False, the default). Cover images: True (a bf16 build 12% faster); video
        clips: False (their build is bound by decoding, and normalising 512 frames in the model's thread cost
        it 4%; docs/results.md §3w)."""
        return False

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing settings that cached states depend on (compared when a cache is opened)."""
        return preprocessing_settings(self.modality, self.spec, self.info)

    def processor_settings(self) -> dict[str, Any]:
        """The processor's resolved settings (recorded in cache manifests for information)."""
        return {}

    # ------------------------------------------------------------------ common
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def has(self, record: ItemRecord) -> bool:
        return record.has(self.modality)

    def load_media(self, records: list[ItemRecord], catalogue: Catalogue, on_corrupt: str = "error") -> LoadedMedia:
        """Read each record's media. A corrupt file raises, or with ``on_corrupt='missing'`` counts as absent."""
        media: list[Any] = []
        present: list[bool] = []
        corrupt: list[MediaError | None] = []
        for r in records:
            item, err = self._read_one(r, catalogue, on_corrupt)
            media.append(item)
            present.append(item is not None)
            corrupt.append(err)
        return LoadedMedia(media, present, corrupt)

    def _read_one(self, record: ItemRecord, catalogue: Catalogue, on_corrupt: str) -> tuple[Any, MediaError | None]:
        """A record's media (None where it has none), and the error of a corrupt file marked missing."""
        if not self.has(record):
            return None, None
        try:
            return self.read(record, catalogue), None
        except MediaError as e:
            if on_corrupt != "missing":
                raise
            return None, e

    def load_inputs(self, records: list[ItemRecord], catalogue: Catalogue, on_corrupt: str = "error"
                    ) -> tuple[LoadedMedia, Any]:
        """The part of encoding a batch that the cache builder runs in its reading thread: :meth:`load_media`
        and as much of the processing as runs there. Where :attr:`per_item_inputs`, each item is staged
        (:meth:`stage`) as soon as it is read and the loaded media hold None in its place, one decoded item
        in memory at a time; the staged items are returned as a list where :attr:`finish_in_model_thread`,
        and finished here otherwise. Other encoders process the batch whole (:meth:`process_loaded`).
        :meth:`finish_loaded` turns the second value (None when no item is present) into the model inputs:
        the same as :meth:`process_loaded` of :meth:`load_media`."""
        if not self.per_item_inputs:
            loaded = self.load_media(records, catalogue, on_corrupt)
            return loaded, self.process_loaded(loaded)
        staged: list[Any] = []
        present: list[bool] = []
        corrupt: list[MediaError | None] = []
        for r in records:
            item, err = self._read_one(r, catalogue, on_corrupt)
            present.append(item is not None)
            corrupt.append(err)
            if item is not None:
                try:
                    staged.append(self.stage(item))
                except MemoryError as e:  # the processor's resize of a very large (or thin) frame
                    raise MediaMemoryError(r.item_id, catalogue.path(r, self.modality), e) from e
                del item
        if staged and not self.finish_in_model_thread:
            return LoadedMedia([None] * len(records), present, corrupt), self.finish(staged)
        return LoadedMedia([None] * len(records), present, corrupt), staged or None

    def prepare(
        self, records: list[ItemRecord], catalogue: Catalogue, on_corrupt: str = "error"
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs for every record (placeholders where absent) and the presence mask ``[B]``."""
        loaded = self.load_media(records, catalogue, on_corrupt)
        filled = [m if p else self.placeholder() for m, p in zip(loaded.media, loaded.present)]
        return self.process(filled), torch.tensor(loaded.present, dtype=torch.bool)

    def hidden_states(self, inputs: dict[str, torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """Run the backbone: all hidden states (embedding output first) and the mean-pooling token mask."""
        device = self.device
        kwargs = {k: v.to(device) for k, v in inputs.items() if k != POOL_MASK}
        out = self.model(**kwargs, **self.model_kwargs, output_hidden_states=True)
        hidden = out.hidden_states
        if len(hidden) != self.num_layers + 1:
            raise RuntimeError(
                f"{self.name}: expected {self.num_layers + 1} hidden states, the model returned {len(hidden)}"
            )
        mask = self.pool_mask(inputs, hidden[0].shape[1])
        return hidden, None if mask is None else mask.to(device)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled hidden states at the taps, ``[B, K, D]`` (float32)."""
        hidden, mask = self.hidden_states(inputs)
        return torch.stack([pool(hidden[t], self.pooling, mask) for t in self.taps], dim=1)

    def pool_mask(self, inputs: dict[str, torch.Tensor], num_tokens: int) -> torch.Tensor | None:
        """Which output tokens count in mean pooling (None: all)."""
        if POOL_MASK in inputs:
            return inputs[POOL_MASK]
        return inputs.get("attention_mask")

    @torch.no_grad()
    def encode(self, records: list[ItemRecord], catalogue: Catalogue, on_corrupt: str = "error") -> EncodedBatch:
        """Load, preprocess and encode a batch; the backbone runs on the present items only."""
        loaded = self.load_media(records, catalogue, on_corrupt)
        return self.encode_loaded(loaded)

    def process_loaded(self, loaded: LoadedMedia) -> dict[str, torch.Tensor] | None:
        """Model inputs of the present items of a loaded batch (None when none is present)."""
        media = [m for m, p in zip(loaded.media, loaded.present) if p]
        return self.process(media) if media else None

    def finish_loaded(self, staged: Any) -> dict[str, torch.Tensor] | None:
        """The model inputs of what :meth:`load_inputs` returned beside the loaded media, made in the model's
        thread (None when no item is present)."""
        if staged is None or not (self.per_item_inputs and self.finish_in_model_thread):
            return staged
        return self.finish(staged)

    @torch.no_grad()
    def encode_loaded(self, loaded: LoadedMedia, inputs: dict[str, torch.Tensor] | None = None) -> EncodedBatch:
        """Encode media read by :meth:`load_media`; ``inputs``: their :meth:`process_loaded`, if already made
        (the cache builder reads the next batch in a thread while this one runs: :meth:`load_inputs`, then
        :meth:`finish_loaded`)."""
        present = torch.tensor(loaded.present, dtype=torch.bool)
        states = torch.zeros(len(loaded.media), self.num_taps, self.hidden_size)
        if present.any():
            if inputs is None:
                inputs = self.process_loaded(loaded)
            states[present] = self.forward(inputs).float().cpu()
        return EncodedBatch(states, present, loaded.corrupt)

    def describe(self) -> dict[str, Any]:
        """What produced this encoder's states (the model part of a cache manifest)."""
        return describe_encoder(self.modality, self.spec, self.info) | {"processor": self.processor_settings()}


def own_image_size(modality: str, spec: EncoderSpec, info: BackboneInfo) -> int:
    """``spec.image_size``, or 0 where it is the size the model takes when it is not set (its config string's,
    or a packaged CNN's) and crossan resizes to it itself: the states are those of ``image_size=0``, so the
    manifest records the same settings and a cache built either way serves both (a set size that changed
    nothing made a cache stale). A checkpoint's own image processor may do otherwise at a set size (a
    shortest-edge resize becomes a square one), so its setting is recorded as given."""
    if not spec.image_size or not (info.random_init or info.family == "efficientnet"):
        return spec.image_size
    from crossan.encoders.backbones import describe_backbone

    own = describe_backbone(modality, dataclasses.replace(spec, image_size=0)).hf_config
    return 0 if spec.image_size == int(own.image_size) else spec.image_size


def preprocessing_settings(modality: str, spec: EncoderSpec, info: BackboneInfo) -> dict[str, Any]:
    """The spec-level preprocessing settings of a modality (known without loading the model). A setting given
    at the value its default resolves to is recorded as the default (:func:`own_image_size`,
    :func:`~crossan.encoders.audio.own_sample_rate`)."""
    from crossan.data.media import resampler_name
    from crossan.encoders.audio import own_sample_rate
    from crossan.encoders.backbones import tokenizer_name

    if modality in ("image", "video"):
        spec = dataclasses.replace(spec, image_size=own_image_size(modality, spec, info))
    if modality == "text":
        return {"max_text_len": spec.max_text_len, "tokenizer": tokenizer_name(info), "padding": "longest"}
    cnn = {"image_size": int(info.hf_config.image_size), "pixels": "(x-127)/128"} if info.family == "efficientnet" else {}
    if modality == "image":
        # a set image_size on a transformers processor: since crossan 0.1.6 a centre-cropping processor keeps its
        # share of the image (resize scaled with the crop); the key makes caches built the old way stale
        crop = {"resize": "keeps_crop_share"} if spec.image_size and info.family != "efficientnet" else {}
        # since crossan 0.1.6 transparent pixels are composited onto white (crossan.data.media); caches of older
        # crossan read the colour stored under them and lack this key, so they no longer match and are rebuilt
        # (once, also those of 0.1.6 to 0.1.9: nothing in a cache tells whether its images had transparency)
        # since crossan 0.1.16 a PNG whose image data ends after whole rows is corrupt (crossan.data.media), where
        # older crossan encoded its missing rows as black: their image caches lack the key and are rebuilt once
        return {"image_size": spec.image_size} | cnn | crop | {"transparency": "over_white", "short_png": "refused"}
    if modality == "video":
        return {
            "image_size": spec.image_size,
            "num_frames": int(spec.num_frames or info.hf_config.num_frames),
            "frame_sampling": spec.frame_sampling,
        } | cnn | {"transparency": "over_white"}  # since crossan 0.1.10, as images (older video caches are stale)
    if modality == "audio":
        # AST: short clips padded with zero filterbank frames, as ASTFeatureExtractor does (caches of older
        # crossan padded the waveform with silence and lack this key, so they no longer match)
        padding = {"padding": AST_PADDING} if info.family == "ast" else {}
        return {"audio_seconds": spec.audio_seconds, "sample_rate": own_sample_rate(spec, info),
                "resampler": resampler_name(), **padding}
    raise ValueError(f"unknown modality {modality!r}")


def describe_encoder(modality: str, spec: EncoderSpec, info: BackboneInfo) -> dict[str, Any]:
    """The fields of a cache manifest that depend on the encoder (computable without weights).

    ``weights`` (where they come from) and ``tap_widths`` (the real width of each tap where it is below
    ``hidden_size``: a CNN's pooled maps are zero-padded) are for people; they are not compared.
    ``weights_digest``, ``preprocessor_digest`` and ``config_digest``
    (:func:`~crossan.encoders.backbones.weights_digest`, :func:`~crossan.encoders.backbones.preprocessor_digest`,
    :func:`~crossan.encoders.backbones.config_digest`) are compared, where the cache records them."""
    taps = tap_indices(info.num_layers, spec.num_taps)
    return {
        "checkpoint": info.name,
        "family": info.family,
        "model_type": info.model_type,
        "random_init": info.random_init,
        "weights": info.source,
        "weights_digest": weights_digest(info),
        "preprocessor_digest": preprocessor_digest(info),
        "config_digest": config_digest(info),
        "num_layers": info.num_layers,
        "hidden_size": info.hidden_size,
        "taps": taps,
        "tap_widths": [info.tap_widths[t] for t in taps] if info.tap_widths else [info.hidden_size] * len(taps),
        "pooling": resolve_pooling(spec.pooling, info.family),
        "preprocessing": preprocessing_settings(modality, spec, info),
    }
