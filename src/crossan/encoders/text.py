"""Text encoder: a BERT-like model over the item title (CLS pooling by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import load_text
from crossan.encoders.backbones import BackboneInfo, EncoderSpecError, load_tokenizer
from crossan.encoders.base import ModalityEncoder

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord


def position_limit(info: BackboneInfo) -> int | None:
    """The most tokens the text model's position table takes (None: the config does not say).

    ``max_position_embeddings``, less the offset RoBERTa-style models start their positions at
    (``pad_token_id + 1``)."""
    cfg = info.hf_config
    limit = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    if info.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(getattr(cfg, "pad_token_id", 1) or 0) + 1
    return limit


def check_text_length(info: BackboneInfo, spec: EncoderSpec) -> None:
    """Refuse a ``max_text_len`` longer than the model's position table (it fails inside the embedding
    layer otherwise, at the first long title), naming the key and the limit."""
    limit = position_limit(info)
    if limit is not None and spec.max_text_len > limit:
        raise EncoderSpecError(
            f"encoders.text.max_text_len={spec.max_text_len} is longer than the text model {info.name!r} "
            f"takes: its position table holds {limit} tokens (max_position_embeddings); set "
            f"encoders.text.max_text_len to at most {limit}")


def check_room_for_words(info: BackboneInfo, spec: EncoderSpec, tokenizer: Any) -> None:
    """Refuse a ``max_text_len`` that leaves no room for a title's words beside the special tokens the
    tokenizer adds (BERT's [CLS] and [SEP]): every title would encode as the same specials, or — at a length
    below the specials' count — the tokenizer stops truncating and long titles overrun the position table."""
    specials = int(tokenizer.num_special_tokens_to_add(pair=False))
    if spec.max_text_len <= specials:
        raise EncoderSpecError(
            f"encoders.text.max_text_len={spec.max_text_len} leaves no room for a title's words: the tokenizer "
            f"of {info.name!r} adds {specials} special tokens to every title; set encoders.text.max_text_len to "
            f"at least {specials + 1}")


class TextEncoder(ModalityEncoder):
    """Tokenises titles (truncated to ``max_text_len``, padded to the longest in the batch)."""

    modality = "text"

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        check_text_length(info, spec)  # before loading any weights
        super().__init__(info, spec, model)
        self.tokenizer = load_tokenizer(info)
        # padding after the tokens, whatever the checkpoint's tokenizer prefers: the CLS pooling reads position 0,
        # which under left padding is a [PAD] for every title shorter than its batch's longest
        self.tokenizer.padding_side = "right"
        check_room_for_words(info, spec, self.tokenizer)

    def read(self, record: ItemRecord, catalogue: Catalogue) -> Any:
        return load_text(record.text)

    def placeholder(self) -> Any:
        return ""

    def process(self, media: list[Any]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(media),
            padding="longest",
            truncation=True,
            max_length=self.spec.max_text_len,
            return_tensors="pt",
        )
        return dict(enc)

    def processor_settings(self) -> dict[str, Any]:
        return {"tokenizer": type(self.tokenizer).__name__, "vocab_size": len(self.tokenizer)}
