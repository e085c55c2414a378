"""crossan: efficient adaptation of frozen multimodal foundation models for sequential recommendation."""

__version__ = "0.1.22"
