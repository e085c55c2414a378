"""Data: readers for the supported layouts, the item catalogue, and the leave-one-out protocol."""

from crossan.data.catalogue import MODALITIES, Catalogue, ItemRecord
from crossan.data.protocol import SequentialData, SplitArrays, apply_protocol, prepare, stats
from crossan.data.readers import DataError, RawData, read

__all__ = ["MODALITIES", "Catalogue", "DataError", "ItemRecord", "RawData", "SequentialData", "SplitArrays",
           "apply_protocol", "prepare", "read", "stats"]
