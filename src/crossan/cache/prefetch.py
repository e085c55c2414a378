"""Whether a cache build reads the next batch in a thread while the current one runs through the encoder
(``cache.prefetch``).

Reading ahead (``ahead``, the default) hides the reading (file I/O, decoding, resizing, tokenising) behind the
forward, but the reading thread competes for the cores with the forward's own threads (torch uses one per
core), and a forward made of many short parallel steps then waits at every step for its slowest thread.
Reading each batch when it is needed (``on_demand``) leaves the cores to the forward. Which is faster depends on
the encoder and the machine: on the 2-core AMX Xeon of docs/results.md §3v a bf16 EfficientNet-Lite0 image build
ran 14% faster on demand (272.6 against 238.6 items/s, medians, fresh processes, benchmarks/prefetch_ab.py), an
audio build (Whisper's long matrix products, costlier reading) about 9% faster ahead, and a video build the same
either way. Tried and not kept, twice: a build timing both ways on its own batches and keeping the faster. Two batches each way at the
start chose differently from run to run; after three warm-up batches, four alternating blocks of three chose
"ahead" for every image build, because batches read on demand inside such a build took 144–148 ms where a build
reading on demand throughout takes 118 ms a batch (not understood; the allocator's per-thread arenas are one
suspect). The states are the same bytes either way: only when a batch is read changes.
"""

from __future__ import annotations

SETTINGS = ("ahead", "on_demand")


def check_setting(setting: str) -> bool:
    """Whether ``setting`` reads ahead; ``ValueError`` naming ``cache.prefetch`` for anything else."""
    if setting not in SETTINGS:
        raise ValueError(f"cache.prefetch: expected ahead or on_demand, got {setting!r}")
    return setting == "ahead"
