"""The picture of an ArtEmo-Synth clip: a palette set by valence and arousal, a moving motif set by the content class.

Emotion cues (colour-emotion and affective-video research):

* **Valence -> brightness and warmth.** Brightness is the strongest colour predictor of pleasure (Valdez &
  Mehrabian 1994, "Effects of color on emotions"); warm, light hues read as positive and cool, dark ones as
  negative (Kaya & Epps 2004; used as affective image features by Machajdik & Hanbury 2010).
* **Arousal -> saturation, contrast and motion.** Saturation predicts arousal (Valdez & Mehrabian 1994); motion
  activity and pace are the main visual arousal cues of film (Hanjalic & Xu 2005, "Affective video content
  representation and modeling"). The motif also flashes on the sound's note onsets, so the picture's rhythm is the
  music's tempo, itself an arousal cue.

Content cue: a motif per class (ripples for bells, falling streaks for rain, ...), with position, scale, count,
phase and direction drawn per clip. Every motif is an intensity field in [0, 1] rescaled to the same mean coverage
(:func:`match_mean`), and the motif colour comes from the emotion palette, so the clip's mean colour says nothing
about its class: the class lives in spatial and temporal structure only.

Hidden cues (latents.Cues): a picture that hides its content shows drifting fog (:func:`fog_motif`, the same for
every class) instead of the class motif; one that hides its arousal is still and muted: the saturation, contrast and
motion of arousal 0, and no flashes on the sound's onsets. Valence (brightness, warmth) always shows.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import numpy as np

from .latents import excitement, pleasantness

MOTIF_COVERAGE = 0.25  # mean of every motif field: equal coverage keeps the mean colour class-blind
GRAIN = 0.015  # per-pixel noise standard deviation (film grain), so no pixel value is exactly repeated


def palette(valence: float, arousal: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and motif colours (RGB in [0, 1]) expressing valence and arousal.

    Hue runs from cool blue (valence -1) to warm orange (+1) and brightness rises with valence; saturation and the
    motif's contrast against the background rise with arousal. Each is jittered per clip, so colour is a noisy cue
    of emotion, as in real pictures, and never a code.
    """
    warm, excite = pleasantness(valence), excitement(arousal)
    hue = 0.60 - 0.52 * warm + rng.normal(0.0, 0.025)
    value = 0.22 + 0.38 * warm + rng.uniform(-0.04, 0.04)
    saturation = np.clip(0.15 + 0.65 * excite + rng.uniform(-0.05, 0.05), 0.0, 1.0)
    contrast = 0.18 + 0.40 * excite + rng.uniform(-0.03, 0.03)
    background = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    motif = colorsys.hsv_to_rgb((hue + rng.uniform(-0.06, 0.06)) % 1.0, 0.85 * saturation, min(value + contrast, 1.0))
    return np.asarray(background, np.float32), np.asarray(motif, np.float32)


def motion_speed(arousal: float, rng: np.random.Generator) -> float:
    """How fast the motif moves (1 = nominal): 0.4x when calm to 1.6x when aroused, jittered by 10%."""
    return (0.4 + 1.2 * excitement(arousal)) * rng.uniform(0.9, 1.1)


def grid(num_frames: int, size: int, fps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x, y in [0, 1) (shape (1, size, size)) and frame times t in s (shape (T, 1, 1))."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    t = (np.arange(num_frames, dtype=np.float32) / fps)[:, None, None]
    return x[None], y[None], t


def wrapped(delta: np.ndarray) -> np.ndarray:
    """A coordinate difference wrapped to [-0.5, 0.5): motifs that leave one edge come back at the other."""
    return (delta + 0.5) % 1.0 - 0.5


def smoothstep(edge: np.ndarray, width: float) -> np.ndarray:
    """A soft step from 0 (edge << 0) to 1 (edge >> 0) over about ``width``, for anti-aliased shapes."""
    return 1.0 / (1.0 + np.exp(-edge / width))


def waves_motif(x, y, t, speed, rng):
    """Undulating horizontal crests rolling up or down the frame (sea swell)."""
    crests = rng.uniform(2.5, 4.5)
    height, cycles, phase = rng.uniform(0.02, 0.06), rng.uniform(0.8, 2.0), rng.uniform(0, 2 * np.pi)
    ripple = height * np.sin(2 * np.pi * (cycles * x + 0.6 * speed * t) + phase)
    crest_phase = 2 * np.pi * (crests * (y + ripple) - rng.choice([-1, 1]) * 0.5 * speed * t + rng.uniform())
    return ((1 + np.cos(crest_phase)) / 2) ** 3


def scroll_down(image: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Frames of ``image`` (H, W) shifted down, periodically, by ``shifts`` (fractions of the height, one per frame).

    Sub-pixel shifts interpolate linearly between the two nearest whole-row shifts.
    """
    height = image.shape[0]
    rows = shifts * height
    whole = np.floor(rows).astype(int)
    fraction = (rows - whole).astype(np.float32)[:, None, None]
    source = (np.arange(height)[None, :] - whole[:, None]) % height
    return (1 - fraction) * image[source] + fraction * image[(source - 1) % height]


def rain_motif(x, y, t, speed, rng):
    """Thin slanted streaks falling fast, in two layers: near drops fall faster than far ones (parallax).

    Each layer is drawn once and scrolled down the frame, which is exact because the streaks wrap around.
    """
    slant, length, width = rng.uniform(-0.3, 0.3), rng.uniform(0.06, 0.12), rng.uniform(0.012, 0.018)
    field = np.zeros(t.shape[:1] + x.shape[1:], np.float32)
    for fall in 1.1 * speed * rng.uniform(0.7, 0.9), 1.1 * speed * rng.uniform(1.1, 1.3):
        count = rng.integers(9, 14)
        x0, y0 = rng.uniform(size=(2, count))
        dy = wrapped(y[0, ..., None] - y0)
        dx = wrapped(x[0, ..., None] - x0 - slant * dy)
        streaks = np.sum(np.exp(-np.square(dx / width) - np.square(dy / length)), axis=-1).astype(np.float32)
        field += scroll_down(streaks, fall * t[:, 0, 0])
    return np.clip(field, 0.0, 1.0)


def fire_motif(x, y, t, speed, rng):
    """Flickering flame tongues rising from the bottom edge, brightest at their base."""
    waves = 4
    frequency = rng.uniform(2.0, 7.0, waves)
    amplitude = rng.uniform(0.04, 0.12, waves)
    rate = 2 * np.pi * speed * rng.uniform(1.5, 3.0, waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    flicker = np.sum(amplitude * np.sin(2 * np.pi * frequency * x[..., None] + rate * t[..., None] + phase), axis=-1)
    height = np.maximum(rng.uniform(0.35, 0.55) + flicker, 0.05)
    elevation = 1.0 - y
    return smoothstep(height - elevation, 0.025) * (0.6 + 0.4 * np.clip(1 - elevation / height, 0, 1))


def birds_motif(x, y, t, speed, rng):
    """A few flapping V-shaped birds gliding sideways."""
    count = rng.integers(3, 6)
    x0, y0 = rng.uniform(size=count), rng.uniform(0.15, 0.85, count)
    drift = rng.choice([-1, 1]) * 0.35 * speed * rng.uniform(0.8, 1.2, count)
    span, width = rng.uniform(0.06, 0.11), 0.018
    flap = 0.9 * np.sin(2 * np.pi * 2.0 * speed * t[..., None] + rng.uniform(0, 2 * np.pi, count))
    dx = wrapped(x[..., None] - x0 - drift * t[..., None])
    dy = y[..., None] - y0
    wing = np.exp(-(((dy + flap * np.abs(dx)) / width) ** 2)) * smoothstep(span - np.abs(dx), 0.01)
    return np.clip(np.sum(wing, axis=-1), 0.0, 1.0)


def bells_motif(x, y, t, speed, rng):
    """Concentric rings spreading from a struck centre (the picture of a ringing bell)."""
    cx, cy = rng.uniform(0.25, 0.75, 2)
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    phase = 2 * np.pi * (rng.uniform(4.0, 7.0) * radius - 1.2 * speed * t + rng.uniform())
    return ((1 + np.cos(phase)) / 2) ** 4 * np.exp(-radius / 0.5)


def city_motif(x, y, t, speed, rng):
    """A panning skyline of blocks with a grid of blinking windows."""
    buildings = rng.integers(5, 9)
    edges = np.sort(rng.uniform(size=buildings))
    heights = rng.uniform(0.3, 0.85, buildings)
    columns, rows = rng.integers(10, 16), rng.integers(10, 16)
    u = (x + rng.choice([-1, 1]) * 0.15 * speed * t) % 1.0
    building = np.searchsorted(edges, u) % buildings
    inside = (1.0 - y) < heights[building]
    window = ((u * columns) % 1.0 < 0.55) & ((y * rows) % 1.0 < 0.55)
    blink_phase = rng.uniform(0, 2 * np.pi, (columns, rows))
    lit = np.sin(2 * np.pi * 1.5 * speed * t + blink_phase[(u * columns).astype(int), (y * rows).astype(int)]) > -0.3
    return inside * (0.3 + 0.7 * (window & lit))


def forest_motif(x, y, t, speed, rng):
    """Upright trunks swaying in the wind, more at the top than at the root."""
    count = rng.integers(5, 9)
    x0, width = rng.uniform(size=count).astype(np.float32), rng.uniform(0.02, 0.045, count).astype(np.float32)
    sway = np.float32(rng.uniform(0.02, 0.05)) * np.square(1 - y[..., None])
    swing = np.sin(2 * np.pi * 0.7 * speed * t[..., None] + rng.uniform(0, 2 * np.pi, count)).astype(np.float32)
    dx = wrapped(x[..., None] - x0 - sway * swing)
    return np.clip(np.sum(np.exp(-np.square(np.square(dx / width))), axis=-1), 0.0, 1.0)


def machine_motif(x, y, t, speed, rng):
    """A spinning wheel of spokes between a hub and a rim (a fan or gear)."""
    cx, cy = rng.uniform(0.3, 0.7, 2)
    spokes = rng.integers(4, 9)
    inner, outer = rng.uniform(0.06, 0.12), rng.uniform(0.28, 0.4)
    radius = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    angle = np.arctan2(y - cy, x - cx)
    spin = rng.choice([-1, 1]) * 2 * np.pi * 0.5 * speed * t
    blades = ((1 + np.cos(spokes * (angle - spin))) / 2) ** 2
    return blades * smoothstep(radius - inner, 0.01) * smoothstep(outer - radius, 0.01)


def fog_motif(x, y, t, speed, rng):
    """Drifting fog: a few smooth low-frequency waves over the frame, the occluded view of any class."""
    waves = 5
    frequency = rng.normal(0.0, 1.5, (waves, 2))
    velocity = rng.normal(0.0, 0.4, (waves, 2)) * speed
    phase = rng.uniform(0, 2 * np.pi, waves)
    field = sum(
        np.cos(2 * np.pi * (fx * (x - vx * t) + fy * (y - vy * t)) + p)
        for (fx, fy), (vx, vy), p in zip(frequency, velocity, phase)
    )
    return (field - field.min()) / (np.ptp(field) + 1e-6)


MOTIFS: dict[str, Callable] = {
    "waves": waves_motif,
    "rain": rain_motif,
    "fire": fire_motif,
    "birds": birds_motif,
    "bells": bells_motif,
    "city": city_motif,
    "forest": forest_motif,
    "machine": machine_motif,
}


def match_mean(field: np.ndarray, target: float = MOTIF_COVERAGE, steps: int = 24) -> np.ndarray:
    """``clip(s * field, 0, 1)`` with the gain ``s`` found by bisection so that its mean is ``target``.

    The mean of ``clip(s * field)`` grows monotonically with ``s``, so bisection on log ``s`` converges; a sparse
    motif (rain streaks) gets a gain above 1 and saturates, a dense one (ripples) is dimmed.
    """
    low, high = -4.0, 6.0
    for _ in range(steps):
        middle = (low + high) / 2
        if np.clip(field * np.exp(middle), 0.0, 1.0).mean() < target:
            low = middle
        else:
            high = middle
    return np.clip(field * np.exp((low + high) / 2), 0.0, 1.0)


def onset_flash(onsets: np.ndarray, times: np.ndarray, decay: float = 0.12) -> np.ndarray:
    """Per-frame brightness of the motif: 1 plus a flash decaying after each sound onset (audio-visual sync)."""
    since = times[:, None] - onsets[None, :]
    return 1.0 + 0.35 * np.where(since >= 0, np.exp(-since / decay), 0.0).max(axis=1, initial=0.0)


def render_frames(
    content: str | None,
    valence: float,
    arousal: float | None,
    onsets: np.ndarray,
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    fps: float,
) -> np.ndarray:
    """Frames (T, size, size, 3) uint8: the class motif in emotion colours, flashing on the sound's onsets.

    ``content=None`` occludes the motif (fog instead); ``arousal=None`` renders a still, muted picture (see the
    module docstring).
    """
    still = arousal is None
    arousal = 0.0 if still else arousal
    background, foreground = palette(valence, arousal, rng)
    x, y, t = grid(num_frames, size, fps)
    motif = fog_motif if content is None else MOTIFS[content]
    field = match_mean(motif(x, y, t, motion_speed(arousal, rng), rng).astype(np.float32))
    if not still:
        field = field * onset_flash(onsets, t[:, 0, 0]).astype(np.float32)[:, None, None]
    frames = background + (foreground - background) * field[..., None]
    frames += rng.normal(0.0, GRAIN, frames.shape).astype(np.float32)
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
