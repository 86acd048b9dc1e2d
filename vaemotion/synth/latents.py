"""The shared latent of an ArtEmo-Synth clip: a content class and a point in the valence-arousal plane.

Picture and sound are both rendered from this one latent, so what one modality says about the clip, the other says
too: that is what lets a visual teacher train an audio student without audio labels. Each modality may also hide
part of the latent (:class:`Cues`), always a part the other modality shows: the picture hides the content class
behind fog or its arousal in a still, muted frame; the sound hides its valence in a mode-neutral melody. Each of the
three is hidden in ``HIDDEN_CUE_RATE`` of the clips, drawn independently, so neither modality alone can answer every
item while the two together can.

Emotion categories come from (valence, arousal) by one documented rule (:func:`emotion_from_valence_arousal`):
the valence-arousal plane is cut into eight 45-degree sectors around the origin, loosely after Russell's circumplex
model of affect (Russell 1980, "A circumplex model of affect"), one ArtEmis category per sector. This mapping is
our design: ArtEmis itself gives categories, not coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Content classes: single lowercase words (a word-level tokenizer reads them in multiple-choice options). Each has a
# visual motif (synth/visual.py) and a sonic signature (synth/audio.py); neither is a fixed colour or a fixed pitch.
CONTENT_CLASSES = ("waves", "rain", "fire", "birds", "bells", "city", "forest", "machine")

# Sector k covers angles [45k, 45(k+1)) degrees of atan2(arousal, valence), counter-clockwise from "pleasant":
#   0 amusement   (pleasant, mildly aroused)        4 disgust     (unpleasant, mildly calm)
#   1 excitement  (aroused more than pleasant)      5 sadness     (calm more than unpleasant: deactivated)
#   2 anger       (aroused more than unpleasant)    6 awe         (calm more than pleasant: hushed wonder)
#   3 fear        (unpleasant, mildly aroused)      7 contentment (pleasant, mildly calm)
EMOTION_SECTORS = ("amusement", "excitement", "anger", "fear", "disgust", "sadness", "awe", "contentment")
SECTOR_DEGREES = 45.0


# Share of clips in which each cue is hidden (our design: large enough that sound visibly adds to sight, small
# enough that each modality still answers most items, so a visual teacher still teaches the sound).
HIDDEN_CUE_RATE = 0.3
# Each hides what the other modality shows: the sound always carries content and arousal, the picture valence.
CUES = ("picture_content", "picture_arousal", "sound_valence")


@dataclass(frozen=True)
class ClipLatent:
    """What one clip expresses. ``valence`` and ``arousal`` are in [-1, 1]; ``emotion`` follows from them."""

    clip_id: str
    content: str
    valence: float
    arousal: float
    emotion: str


@dataclass(frozen=True)
class Cues:
    """Which parts of its latent a clip's picture and sound show (``True``: shown)."""

    picture_content: bool = True
    picture_arousal: bool = True
    sound_valence: bool = True

    @property
    def hidden(self) -> list[str]:
        """Names of the hidden cues, in ``CUES`` order."""
        return [name for name in CUES if not getattr(self, name)]


def sample_cues(num_clips: int, rng: np.random.Generator, rate: float = HIDDEN_CUE_RATE) -> list[Cues]:
    """Per clip, which cues are hidden: for each cue, exactly ``round(rate * num_clips)`` clips, drawn independently
    of the other cues and of the latents (so hiding never reveals a class or an emotion)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"hidden_cue_rate must be in [0, 1], got {rate}")
    count = int(round(rate * num_clips))
    shown = {name: rng.permutation(num_clips) >= count for name in CUES}
    return [Cues(**{name: bool(shown[name][index]) for name in CUES}) for index in range(num_clips)]


def excitement(arousal: float) -> float:
    """Arousal mapped from [-1, 1] to [0, 1] (how strongly the arousal cues are turned up)."""
    return (arousal + 1.0) / 2.0


def pleasantness(valence: float) -> float:
    """Valence mapped from [-1, 1] to [0, 1] (how strongly the valence cues are turned up)."""
    return (valence + 1.0) / 2.0


def emotion_sector(valence: float, arousal: float) -> int:
    """Index of the 45-degree sector of the valence-arousal plane that holds (valence, arousal)."""
    angle = math.degrees(math.atan2(arousal, valence)) % 360.0
    return int(angle // SECTOR_DEGREES) % len(EMOTION_SECTORS)


def emotion_from_valence_arousal(valence: float, arousal: float) -> str:
    """The ArtEmis category of a valence-arousal point: the category of its sector (see ``EMOTION_SECTORS``).

    Positive valence gives amusement, excitement, awe or contentment; negative gives anger, fear, disgust or
    sadness; within a quadrant the second cut is the diagonal |arousal| = |valence|.
    """
    return EMOTION_SECTORS[emotion_sector(valence, arousal)]


def sample_valence_arousal(
    emotion: str, rng: np.random.Generator, min_radius: float = 0.35, angle_margin: float = 5.0
) -> tuple[float, float]:
    """A (valence, arousal) point inside ``emotion``'s sector, away from its edges and from the neutral origin.

    The angle keeps ``angle_margin`` degrees from both sector edges and the radius is at least ``min_radius``, so
    every category is unambiguous in both modalities (a point on the diagonal would be half anger, half fear).
    Points stay in the unit disc, hence in [-1, 1]^2; they are rounded to 4 decimals (the metadata's precision),
    which cannot cross a sector edge given the margin.
    """
    lower = EMOTION_SECTORS.index(emotion) * SECTOR_DEGREES
    angle = math.radians(rng.uniform(lower + angle_margin, lower + SECTOR_DEGREES - angle_margin))
    radius = rng.uniform(min_radius, 1.0)
    return round(radius * math.cos(angle), 4), round(radius * math.sin(angle), 4)


def balanced_labels(names: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` labels drawn so every name occurs ``count // len(names)`` or one more times, in random order."""
    repeated = np.resize(np.arange(len(names)), count)
    return [names[index] for index in rng.permutation(repeated)]


def sample_latents(
    num_clips: int, rng: np.random.Generator, classes: Sequence[str] = CONTENT_CLASSES, id_prefix: str = "clip"
) -> list[ClipLatent]:
    """``num_clips`` latents: content classes and emotion categories each balanced, drawn independently.

    Content and emotion are independent on purpose: a clip's colours and loudness (which carry emotion) must not
    reveal its content class, and its motif and timbre (which carry the class) must not reveal its emotion.
    """
    contents = balanced_labels(list(classes), num_clips, rng)
    emotions = balanced_labels(list(EMOTION_SECTORS), num_clips, rng)
    width = max(5, len(str(num_clips - 1)))
    latents = []
    for index, (content, emotion) in enumerate(zip(contents, emotions)):
        valence, arousal = sample_valence_arousal(emotion, rng)
        latents.append(ClipLatent(f"{id_prefix}_{index:0{width}d}", content, valence, arousal, emotion))
    return latents
