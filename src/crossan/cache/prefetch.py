"""Whether a cache build reads the next batch in a thread while the current one runs through the encoder.

Reading ahead hides the reading (file I/O, decoding, resizing, tokenising) behind the forward, but the reading
thread then competes for the cores with the forward's own threads (torch uses one per core), and a forward
made of many short parallel steps waits at every step for its slowest thread. On the 2-core AMX Xeon of
docs/results.md §3v a bf16 EfficientNet-Lite0 image build ran 14% faster reading each batch when needed, while
an audio build (Whisper's long matrix products) ran 11% faster reading ahead, and video was the same either way.
So ``cache.prefetch=auto`` measures both on the build's own first batches and keeps the faster.

:class:`PrefetchPlan` decides, batch by batch, whether batch ``i`` is read ahead (during batch ``i − 1``):

- batch 0: read when needed (nothing runs before it); batches 1–3 read ahead; 4–6 read when needed;
- a batch's time is from the start of its turn to its states being on disk. Batches 1 and 2 (read ahead, the
  next one read beside them) and 4 and 5 (read when needed) are compared; batch 3 (read ahead, but nothing read
  beside it) and batch 6 are not counted;
- from batch 7 on, the faster way (ahead on a tie). Fewer than ``MIN_BATCHES_TO_MEASURE`` pending batches:
  read ahead throughout, unmeasured.

The states are the same bytes either way: only when a batch is read changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_BATCHES_TO_MEASURE = 12
"""Builds with fewer pending batches read ahead throughout (the trial would be most of the build)."""

_AHEAD_TRIAL, _WHEN_NEEDED_TRIAL = (1, 2), (4, 5)
_DECIDED_FROM = 7


@dataclass
class PrefetchPlan:
    """``setting``: ``auto`` | ``ahead`` | ``off`` (``cache.prefetch``); ``num_batches``: pending batches."""

    setting: str
    num_batches: int
    times: dict[int, float] = field(default_factory=dict)
    decided: bool | None = None
    """Under ``auto``, once measured: True to read ahead, False to read when needed."""

    def __post_init__(self) -> None:
        if self.setting not in ("auto", "ahead", "off"):
            raise ValueError(f"cache.prefetch: expected auto, ahead or off, got {self.setting!r}")

    @property
    def measuring(self) -> bool:
        return self.setting == "auto" and self.num_batches >= MIN_BATCHES_TO_MEASURE

    def ahead(self, i: int) -> bool:
        """Whether batch ``i`` is read during batch ``i − 1``."""
        if self.setting == "off" or i == 0:
            return False
        if not self.measuring:
            return True
        if i < _DECIDED_FROM:
            return 1 <= i <= 3
        return self._decide()

    def record(self, i: int, seconds: float) -> None:
        """Batch ``i`` took ``seconds`` from the start of its turn to its states being on disk."""
        if self.measuring and i in _AHEAD_TRIAL + _WHEN_NEEDED_TRIAL:
            self.times[i] = seconds

    def _decide(self) -> bool:
        if self.decided is None:
            ahead = sum(self.times.get(i, 0.0) for i in _AHEAD_TRIAL)
            when_needed = sum(self.times.get(i, 0.0) for i in _WHEN_NEEDED_TRIAL)
            self.decided = ahead <= when_needed
        return self.decided

    def describe(self) -> str:
        """For the build's report: how batches were read, with what the trial measured under ``auto`` (empty
        where they were read ahead unmeasured)."""
        if self.setting == "off":
            return "each batch read when needed (cache.prefetch=off)"
        if not self.measuring or self.decided is None:
            return ""  # read ahead, unmeasured: what every build did before cache.prefetch
        ahead = 1e3 * sum(self.times[i] for i in _AHEAD_TRIAL) / len(_AHEAD_TRIAL)
        when_needed = 1e3 * sum(self.times[i] for i in _WHEN_NEEDED_TRIAL) / len(_WHEN_NEEDED_TRIAL)
        way = "next batch read ahead" if self.decided else "each batch read when needed"
        return f"{way} (measured {ahead:.0f} ms a batch reading ahead, {when_needed:.0f} ms reading when needed)"
