"""Whether a cache build reads the next batch in a thread while the current one runs through the encoder
(``cache.prefetch``).

Reading ahead (``ahead``, the default) hides the reading (file I/O, decoding, resizing, tokenising) behind the
forward, but the reading thread competes for the cores with the forward's own threads (torch uses one per
core), and a forward made of many short parallel steps then waits at every step for its slowest thread.
Reading each batch when it is needed (``on_demand``) leaves the cores to the forward. Which is faster depends on
the encoder and the machine: on the 2-core AMX Xeon of docs/results.md §3v a bf16 EfficientNet-Lite0 image build
ran 6–17% faster on demand (271–287 against 246–258 items/s, fresh processes), an audio build (Whisper's long
matrix products, costlier reading) about 11% faster ahead, and a video build the same either way. A build that
timed both on its first batches and kept the faster was tried and not kept: two batches each way did not pick
reliably. The states are the same bytes either way: only when a batch is read changes.
"""

from __future__ import annotations

SETTINGS = ("ahead", "on_demand")


def check_setting(setting: str) -> bool:
    """Whether ``setting`` reads ahead; ``ValueError`` naming ``cache.prefetch`` for anything else."""
    if setting not in SETTINGS:
        raise ValueError(f"cache.prefetch: expected ahead or on_demand, got {setting!r}")
    return setting == "ahead"
