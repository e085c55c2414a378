"""Text encoder: a BERT-like model over the item title (CLS pooling by default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from crossan.config import EncoderSpec
from crossan.data.media import load_text
from crossan.encoders.backbones import BackboneInfo, load_tokenizer
from crossan.encoders.base import ModalityEncoder

if TYPE_CHECKING:
    from crossan.data.catalogue import Catalogue, ItemRecord


class TextEncoder(ModalityEncoder):
    """Tokenises titles (truncated to ``max_text_len``, padded to the longest in the batch)."""

    modality = "text"

    def __init__(self, info: BackboneInfo, spec: EncoderSpec, model: nn.Module | None = None) -> None:
        super().__init__(info, spec, model)
        self.tokenizer = load_tokenizer(info)

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
