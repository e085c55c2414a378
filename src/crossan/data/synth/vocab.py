"""The synthetic dataset's vocabularies and constants: sizes, latent attributes per modality, media formats
and the taste model's weights (see :mod:`crossan.data.synth`)."""

from __future__ import annotations

from dataclasses import dataclass

GENERATOR = "crossan.data.synth"
GENERATOR_VERSION = 3
"""3: clips encoded by libx264 at a constant quantiser (QP 23; CRF 23 before), so that their bytes do not depend
on the process; 2: the ``small`` size has 1,000 items (version 1: 500), about 28 interactions per item."""

MEDIA_MODALITIES: tuple[str, ...] = ("image", "video", "audio")
MODALITY_ORDER: tuple[str, ...] = ("text", "image", "video", "audio")

# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class SizeSpec:
    """How many items and users a size has, and the range of history lengths (inclusive)."""

    n_items: int
    n_users: int
    min_len: int
    max_len: int


# Interactions per item (mean history length x users / items): tiny about 15, small about 28, medium and
# large about 70. Content towers earn their keep where items have few interactions each; the demo's small size
# has 1,000 items since version 2 (500 before, about 56 interactions each, where an item-ID model learned every
# item well enough to match four modalities through randomly initialised encoders).
SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(n_items=60, n_users=100, min_len=6, max_len=12),
    "small": SizeSpec(n_items=1000, n_users=2000, min_len=8, max_len=20),
    "medium": SizeSpec(n_items=2000, n_users=10000, min_len=8, max_len=20),
    "large": SizeSpec(n_items=10000, n_users=50000, min_len=8, max_len=20),
}

# ------------------------------------------------------------------------------------------ vocabularies

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # topic: (subjects, formats)
    "jazz": (
        ("jazz piano", "saxophone", "swing band", "bebop trio", "jazz guitar"),
        ("session", "jam", "set", "night", "improv"),
    ),
    "cooking": (
        ("pasta", "street food", "sourdough bread", "curry", "dessert"),
        ("recipe", "tutorial", "cook-along", "kitchen tips", "taste test"),
    ),
    "travel": (
        ("mountain village", "island", "city walk", "desert road", "coastal town"),
        ("vlog", "tour", "diary", "guide", "adventure"),
    ),
    "fitness": (
        ("yoga", "home workout", "running", "stretching", "kettlebell"),
        ("routine", "challenge", "class", "drill", "plan"),
    ),
    "gaming": (
        ("retro arcade", "speedrun", "strategy game", "racing game", "puzzle game"),
        ("playthrough", "highlights", "walkthrough", "livestream", "review"),
    ),
    "pets": (
        ("kitten", "puppy", "parrot", "hamster", "golden retriever"),
        ("moments", "compilation", "training", "day out", "antics"),
    ),
    "science": (
        ("chemistry", "astronomy", "physics", "robotics", "biology"),
        ("experiment", "explainer", "lecture", "demo", "lab notes"),
    ),
    "fashion": (
        ("streetwear", "sneaker", "summer outfit", "thrift", "tailoring"),
        ("haul", "lookbook", "styling tips", "try-on", "showcase"),
    ),
}

STYLES: dict[str, tuple[str, ...]] = {
    # style: words that express it in a title
    "vintage": ("vintage", "retro", "old-school"),
    "modern": ("modern", "contemporary", "fresh"),
    "cozy": ("cozy", "relaxing", "calm"),
    "epic": ("epic", "intense", "wild"),
    "minimal": ("minimal", "simple", "clean"),
    "playful": ("playful", "funny", "quirky"),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (140, 50, 200),
    "pink": (240, 110, 180),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")

MOTIONS: tuple[str, ...] = ("right", "left", "up", "down", "clockwise", "anticlockwise")
SPEEDS: dict[str, tuple[float, float]] = {
    # speed: (pixels per frame for linear motion, radians per frame for orbits)
    "slow": (1.5, 0.2),
    "medium": (3.0, 0.4),
    "fast": (5.0, 0.7),
}

PITCHES: dict[str, float] = {"G3": 196.0, "C4": 261.63, "E4": 329.63, "A4": 440.0, "D5": 587.33, "G5": 783.99}
TEMPOS: dict[str, float] = {"largo": 1.5, "andante": 2.5, "allegro": 4.0, "presto": 6.0}  # beats per second

ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "text": {"topic": tuple(TOPICS), "style": tuple(STYLES)},
    "image": {"colour": tuple(COLOURS), "shape": SHAPES},
    "video": {"motion": MOTIONS, "speed": tuple(SPEEDS)},
    "audio": {"pitch": tuple(PITCHES), "tempo": tuple(TEMPOS)},
}
"""Latent attributes per modality and their values (each item holds one value of every attribute)."""

ATTRIBUTE_KEYS: tuple[tuple[str, str], ...] = tuple((m, a) for m in MODALITY_ORDER for a in ATTRIBUTES[m])
"""Flat order of the attributes: column j of the item attribute matrix is ``ATTRIBUTE_KEYS[j]``."""

# ------------------------------------------------------------------------------------------ media constants

IMAGE_SIZE = 64
VIDEO_SIZE = 64
VIDEO_FRAMES = 12
VIDEO_FPS = 4
AUDIO_RATE = 16_000
AUDIO_SECONDS = 1.5

# ------------------------------------------------------------------------------------------ taste model

TASTE_WEIGHT = 2.5
"""Weight of a taste slot (the log-odds bonus of an item that matches it), jittered by x0.75..1.25 per user."""
WEAK_SLOT_FACTOR = 0.4
"""With ``dominant``, the one slot outside the dominant modality has this share of the weight."""
ECHO_WEIGHT = 1.5
"""Bonus of an item that agrees with the previous item on the user's echo attribute."""
POPULARITY_SCALE = 0.5
"""Standard deviation of the per-item popularity log-odds."""
DRIFT_RANGE = (0.4, 0.7)
"""A slot changes value at a step drawn uniformly in this share of the history length."""
_USER_CHUNK = 1024  # users sampled together; fixed so that the random stream does not depend on the machine

# seed-sequence stream ids, so that each use of randomness has its own independent stream
_STREAM_ITEMS, _STREAM_USERS, _STREAM_TEXT, _STREAM_IMAGE, _STREAM_VIDEO, _STREAM_AUDIO = range(6)
