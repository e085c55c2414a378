"""Whether a cache build reads the next batch in a thread while the current one runs through the encoder
(``cache.prefetch``).

Reading ahead hides the reading (file I/O, decoding, resizing, tokenising) behind the forward, but the reading
thread competes for the cores with the forward's own threads (torch uses one per core), and a forward made of
many short parallel steps then waits at every step for its slowest thread. Reading each batch when it is needed
(``on_demand``) leaves the cores to the forward. Which is faster depends on the encoder and the machine: on the
2-core AMX Xeon of docs/results.md §3v a bf16 EfficientNet-Lite0 image build ran 14% faster on demand, an audio
build (Whisper's long matrix products, costlier reading) 9% faster ahead, a video build the same either way.

``auto`` (default) measures both on the build itself (:class:`PrefetchPlan`): after three warm-up batches read
ahead, four blocks of three batches, read ahead, on demand, ahead, on demand; then the way whose measured batches
took less time (the median; ahead on a tie) for the rest. The last batch of each block is not measured: reading
of the next block's first batch either does not run beside it (ahead → on demand) or does while its own batch
was read before it (on demand → ahead). Builds of fewer than ``MIN_BATCHES_TO_MEASURE`` pending batches read
ahead unmeasured. A first version timed two batches each way right at the start and chose differently from run
to run (the first batches are not yet steady). The states are the same bytes whichever way a batch is read.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

SETTINGS = ("auto", "ahead", "on_demand")

MIN_BATCHES_TO_MEASURE = 30
"""Builds with fewer pending batches read ahead throughout: the trial (15 batches) would be most of the build."""

WARM_UP = 3
BLOCK = 3
BLOCKS = (True, False, True, False)  # read ahead?
DECIDED_FROM = WARM_UP + BLOCK * len(BLOCKS)


@dataclass
class PrefetchPlan:
    """Batch by batch, whether batch ``i`` (its position among the pending batches) is read during batch ``i − 1``;
    ``setting``: ``cache.prefetch``; ``num_batches``: pending batches."""

    setting: str
    num_batches: int
    times: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    decided: bool | None = None
    """Under a measuring ``auto``, once decided: True to read ahead, False on demand."""

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"cache.prefetch: expected auto, ahead or on_demand, got {self.setting!r}")

    @property
    def measuring(self) -> bool:
        return self.setting == "auto" and self.num_batches >= MIN_BATCHES_TO_MEASURE

    def ahead(self, i: int) -> bool:
        """Whether batch ``i`` is read during batch ``i − 1`` (never the first)."""
        if i == 0 or self.setting == "on_demand":
            return False
        if not self.measuring or i < WARM_UP:
            return True
        if i < DECIDED_FROM:
            return BLOCKS[(i - WARM_UP) // BLOCK]
        if self.decided is None:
            self.decided = statistics.median(self.times[True]) <= statistics.median(self.times[False])
        return self.decided

    def record(self, i: int, seconds: float) -> None:
        """Batch ``i`` took ``seconds`` from the start of its turn to its states being on disk."""
        if self.measuring and WARM_UP <= i < DECIDED_FROM and (i - WARM_UP) % BLOCK != BLOCK - 1:
            self.times[BLOCKS[(i - WARM_UP) // BLOCK]].append(seconds)

    def describe(self) -> str:
        """For the build's report line: how batches were read where it was not simply ahead unmeasured."""
        if self.setting == "on_demand":
            return "each batch read on demand (cache.prefetch=on_demand)"
        if self.decided is None:
            return ""
        ahead, on_demand = (1e3 * statistics.median(self.times[k]) for k in (True, False))
        way = "next batch read ahead" if self.decided else "each batch read on demand"
        return f"{way} (measured: {ahead:.0f} ms a batch reading ahead, {on_demand:.0f} ms on demand)"
