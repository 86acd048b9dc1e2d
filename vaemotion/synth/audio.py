"""The sound of an ArtEmo-Synth clip: music set by valence and arousal, timbre and texture set by the content class.

Emotion cues (music-emotion research; Juslin & Laukka 2003, "Communication of emotions in vocal expression and
music performance"; Gabrielsson & Lindstrom 2010):

* **Valence -> mode and consonance.** Major mode reads as happy, minor as sad (Hevner 1935; Gagnon & Peretz 2003);
  consonant harmony is pleasant and dissonant, rough intervals (minor second, tritone) unpleasant (Plomp & Levelt
  1965; Blood et al. 1999). Positive valence plays a major scale over a consonant triad; negative valence a minor
  scale over a triad that gains a minor second and a tritone as valence falls.
* **Arousal -> tempo, note density, articulation, loudness and brightness.** Fast, dense, staccato, loud and
  bright (more high-frequency energy) music is aroused; slow, sparse, legato, soft and dull music is calm.

Content cue: a *timbre* (the instrument playing the melody: harmonic or inharmonic partials, envelope, vibrato,
glide, tremolo) and a *texture* (a noise layer with a class-specific temporal pattern: droplet clicks, crackle,
swell, machine ticks, ...). Pitch is random per clip (a continuous tonic, no fixed key or tuning); a final
normalisation (:func:`normalise_spectral_envelope`) gives every frame of every clip the same coarse spectral
envelope, tilted by arousal only; and a random recording-channel colour (:func:`channel_response`) blurs what fine
long-term spectral detail remains. So the class is neither a set of spectral peaks nor a spectral shape: it lives
in the temporal and fine structure, as natural sound textures are recognised from their modulation statistics
(McDermott & Simoncelli 2011).

Hidden cue (latents.Cues): a sound that hides its valence is mode-neutral: its melody keeps to a scale without a
third or a sixth (:data:`NEUTRAL_SCALE`) over an open fifth, with no dissonance, so it is neither major nor minor,
consonant for every valence. Arousal and content always show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .latents import excitement

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor (Aeolian)
NEUTRAL_SCALE = (0, 2, 5, 7, 10)  # no third, no sixth: neither major nor minor (a hidden valence)
ENVELOPE_BANDS = 16  # spectral-envelope bands: wide (about 190 mel apart) so harmonics and mode stay intact
ENVELOPE_FFT = 512  # frame length of the spectral-envelope normalisation at 16 kHz (32 ms; scaled with the rate)
CHANNEL_DB = 4.0  # spread of the random recording-channel colour (dB)
ROOM_TONE = 0.1  # level of the pink noise floor shared by every clip, relative to the music


# Small products below use np.einsum rather than BLAS matmul: multi-threaded BLAS on tiny matrices was up to 50x
# slower on a busy 2-core machine, and this generator must stay fast on a laptop CPU.


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray:
    """Equal-tempered frequency of a (fractional) MIDI note number, A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def unit_rms(signal: np.ndarray) -> np.ndarray:
    """``signal`` scaled to RMS 1 (left at zero if silent)."""
    rms = np.sqrt(np.mean(signal**2))
    return signal / rms if rms > 0 else signal


@dataclass(frozen=True)
class Score:
    """The music of one clip: a melody (onsets, durations in s, frequencies in Hz) over a held chord."""

    onsets: np.ndarray
    durations: np.ndarray
    frequencies: np.ndarray
    chord: np.ndarray  # chord note frequencies in Hz
    chord_weights: np.ndarray  # their amplitudes


def note_rate(arousal: float, rng: np.random.Generator) -> float:
    """Melody notes per second (tempo and density): 1.5 when calm to 7.5 when aroused, jittered by 10%."""
    return (1.5 + 6.0 * excitement(arousal)) * rng.uniform(0.9, 1.1)


def melody_onsets(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Onsets on a regular beat of ``rate`` per second with 3% timing jitter, starting at a random phase."""
    period = 1.0 / rate
    beats = np.arange(rng.uniform(0.0, 0.5) * period, duration - 0.05, period)
    return np.clip(beats + rng.normal(0.0, 0.03 * period, beats.size), 0.0, duration - 0.05)


def scale_semitones(degrees: np.ndarray, scale: tuple[int, ...]) -> np.ndarray:
    """Semitones above the tonic of scale degrees (degree 7 is the octave)."""
    return 12 * (degrees // len(scale)) + np.asarray(scale)[degrees % len(scale)]


# Melody notes favour the tonic triad (degrees 0, 2, 4 and 7, 9 an octave up) three to one over passing tones, as
# tonal melodies do (Krumhansl's tonal hierarchy): the third, major or minor, is heard often enough to set the
# mode.
MELODY_DEGREES = np.arange(10)
MELODY_WEIGHTS = np.where(np.isin(MELODY_DEGREES, (0, 2, 4, 7, 9)), 3.0, 1.0) / 20.0


def compose_score(valence: float | None, arousal: float, duration: float, rng: np.random.Generator) -> Score:
    """A melody (mostly tonic-triad notes of the scale) over a chord; mode, consonance and tempo carry the emotion.

    ``valence=None`` hides the valence: the neutral scale over an open fifth and octave, without dissonance.
    """
    tonic = rng.uniform(50.0, 66.0)  # continuous MIDI pitch: D3 to F#4, no fixed key or tuning
    rate = note_rate(arousal, rng)
    onsets = melody_onsets(rate, duration, rng)
    degrees = rng.choice(MELODY_DEGREES, size=onsets.size, p=MELODY_WEIGHTS)
    articulation = 0.9 - 0.5 * excitement(arousal)  # legato when calm, staccato when aroused
    if valence is None:
        scale, roughness, chord_tones = NEUTRAL_SCALE, 0.0, [0, 7, 12]
    else:
        scale = MAJOR_SCALE if valence >= 0 else MINOR_SCALE
        roughness, chord_tones = max(0.0, -valence), [0, scale[2], scale[4]]
    chord = tonic - 12 + np.array([*chord_tones, 1, 6])  # triad (or open fifth), then minor second and tritone
    weights = np.array([1.0, 0.8, 0.8, roughness, roughness])
    return Score(
        onsets=onsets,
        durations=np.full(onsets.size, articulation / rate),
        frequencies=midi_to_hz(tonic + scale_semitones(degrees, scale)),
        chord=midi_to_hz(chord),
        chord_weights=weights,
    )


@dataclass(frozen=True)
class Voice:
    """An instrument: partials (frequency ratios to f0 and amplitudes) and how a note evolves in time.

    ``envelope`` is ``"pluck"`` (sharp attack, exponential ring-out with time constant ``decay``), ``"held"``
    (``attack`` ramp, held to the note's end) or ``"swell"`` (fades in and out over the note). ``glide`` is how many
    semitones below its pitch a note starts (a rising chirp over 40 ms); ``vibrato`` and ``tremolo`` are (rate in
    Hz, depth in semitones / fraction of amplitude); ``octave`` shifts the register.
    """

    ratios: tuple[float, ...]
    amplitudes: tuple[float, ...]
    envelope: str
    attack: float = 0.005
    decay: float = 0.0
    glide: float = 0.0
    vibrato: tuple[float, float] = (0.0, 0.0)
    tremolo: tuple[float, float] = (0.0, 0.0)
    octave: int = 0


def harmonics(count: int, rolloff: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Ratios 1..count with amplitudes 1 / k**rolloff (rolloff 1: sawtooth-like, 0: pulse-train-like)."""
    k = np.arange(1, count + 1, dtype=float)
    return tuple(k), tuple(1.0 / k**rolloff)


VOICES: dict[str, Voice] = {
    "waves": Voice((1.0, 2.0, 3.0), (1.0, 0.35, 0.12), "swell"),
    "rain": Voice(*harmonics(8, 1.0), "pluck", attack=0.002, decay=0.07),
    "fire": Voice(*harmonics(10, 1.0), "held", attack=0.03, tremolo=(11.0, 0.6)),
    "birds": Voice((1.0, 2.0), (1.0, 0.08), "held", attack=0.01, glide=9.0, vibrato=(11.0, 0.5), octave=1),
    "bells": Voice((1.0, 2.76, 5.40, 8.93), (1.0, 0.5, 0.35, 0.2), "pluck", attack=0.001, decay=0.5),  # free-bar modes
    "city": Voice((1.0, 3.0, 5.0, 7.0, 9.0), (1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9), "held", attack=0.005),  # square horn
    "forest": Voice((1.0, 2.0, 3.0), (1.0, 0.15, 0.05), "held", attack=0.08, vibrato=(5.0, 0.25)),  # flute
    "machine": Voice(*harmonics(12, 0.0), "held", attack=0.001, tremolo=(30.0, 0.8)),  # rattling buzz
}


def note_envelope(voice: Voice, time: np.ndarray, length: float) -> np.ndarray:
    """Amplitude over a note's own time axis ``time`` (s) for a note lasting ``length`` s."""
    attack = np.minimum(time / max(min(voice.attack, 0.5 * length), 1e-4), 1.0)
    if voice.envelope == "pluck":
        return attack * np.exp(-time / voice.decay)
    if voice.envelope == "swell":
        return np.sin(np.pi * np.clip(time / length, 0.0, 1.0)) ** 2
    release = np.clip((length - time) / 0.01, 0.0, 1.0)
    return attack * release


def play_note(voice: Voice, frequency: float, length: float, ring: float, sampling_rate: int, rng) -> np.ndarray:
    """One note: its partials under pitch glide and vibrato, shaped by the envelope and tremolo.

    ``ring`` is how long the note sounds in total (longer than ``length`` for a plucked ring-out).
    """
    time = np.arange(int(ring * sampling_rate)) / sampling_rate
    vibrato_rate, vibrato_depth = voice.vibrato
    bend = vibrato_depth * np.sin(2 * np.pi * vibrato_rate * time) - voice.glide * np.exp(-time / 0.04)
    instantaneous = frequency * 2.0 ** (voice.octave + bend / 12.0)
    phase = 2 * np.pi * np.cumsum(instantaneous) / sampling_rate
    ratios, amplitudes = np.asarray(voice.ratios), np.asarray(voice.amplitudes)
    audible = ratios * frequency * 2.0**voice.octave < 0.45 * sampling_rate  # no partial above Nyquist
    offsets = rng.uniform(0, 2 * np.pi, ratios.size)
    tone = np.einsum("p,pt->t", amplitudes[audible], np.sin(ratios[audible, None] * phase + offsets[audible, None]))
    tremolo_rate, tremolo_depth = voice.tremolo
    tremolo = 1.0 - tremolo_depth * (0.5 + 0.5 * np.sin(2 * np.pi * tremolo_rate * time))
    return tone * note_envelope(voice, time, length) * tremolo


def render_melody(voice: Voice, score: Score, duration: float, sampling_rate: int, rng) -> np.ndarray:
    """The score's melody played by ``voice``; plucked notes ring on (up to 4 time constants) past their length."""
    out = np.zeros(int(round(duration * sampling_rate)))
    for onset, length, frequency in zip(score.onsets, score.durations, score.frequencies):
        ring = max(length, 4 * voice.decay) if voice.envelope == "pluck" else length
        start = int(onset * sampling_rate)
        note = play_note(voice, frequency, length, min(ring, duration - onset), sampling_rate, rng)
        out[start : start + note.size] += note[: out.size - start]
    return out


def render_chord(score: Score, duration: float, sampling_rate: int, rng) -> np.ndarray:
    """The harmony bed, the same soft pad for every class: held chord tones (3 harmonics) with a 150 ms fade-in."""
    time = (np.arange(int(round(duration * sampling_rate))) / sampling_rate).astype(np.float32)  # float32: 2x faster
    sounding = score.chord_weights > 0
    partials = np.arange(1, 4)
    frequencies = (score.chord[sounding, None] * partials).ravel()
    amplitudes = (score.chord_weights[sounding, None] / partials**2).ravel()
    phases = rng.uniform(0, 2 * np.pi, frequencies.size)
    angular = (2 * np.pi * frequencies[:, None]).astype(np.float32)
    tones = np.sin(angular * time + phases[:, None].astype(np.float32))
    pad = np.einsum("p,pt->t", amplitudes.astype(np.float32), tones)
    return pad * np.minimum(time / 0.15, 1.0)


def coloured_noise(size: int, exponent: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum 1 / f**exponent (0 white, 1 pink, 2 brown) above 40 Hz, unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=size))
    frequency = np.fft.rfftfreq(size, 1.0 / sampling_rate)
    shaped = np.where(frequency >= 40.0, np.maximum(frequency, 40.0) ** (-exponent / 2), 0.0)
    return unit_rms(np.fft.irfft(spectrum * shaped, n=size))


def band_noise(size: int, centre: float, octaves: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Noise in a smooth band around ``centre`` Hz (a Gaussian in log frequency, ``octaves`` wide), unit RMS."""
    spectrum = np.fft.rfft(rng.normal(size=size))
    frequency = np.maximum(np.fft.rfftfreq(size, 1.0 / sampling_rate), 1.0)
    shaped = np.exp(-0.5 * (np.log2(frequency / centre) / (octaves / 2)) ** 2)
    return unit_rms(np.fft.irfft(spectrum * shaped, n=size))


def impulse_train(times: np.ndarray, amplitudes: np.ndarray, size: int, sampling_rate: int) -> np.ndarray:
    """A signal of ``size`` samples with an impulse of each amplitude at each time (s)."""
    out = np.zeros(size)
    np.add.at(out, np.minimum((times * sampling_rate).astype(int), size - 1), amplitudes)
    return out


def decaying_burst(length: float, decay: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A short noise burst with an exponential decay (a click, a drop, a pop)."""
    time = np.arange(int(length * sampling_rate)) / sampling_rate
    return rng.normal(size=time.size) * np.exp(-time / decay)


def poisson_times(rate: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Event times of a Poisson process of ``rate`` events per second over ``duration`` s."""
    return rng.uniform(0.0, duration, rng.poisson(rate * duration))


def slow_envelope(size: int, cutoff: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A positive random envelope fluctuating below ``cutoff`` Hz (at least the lowest non-zero frequency)."""
    spectrum = np.fft.rfft(rng.normal(size=size))
    frequency = np.fft.rfftfreq(size, 1.0 / sampling_rate)
    wobble = np.fft.irfft(spectrum * ((frequency > 0) & (frequency <= max(cutoff, frequency[1]))), n=size)
    return np.exp(0.8 * wobble / np.std(wobble))


def waves_texture(size, sampling_rate, excite, rng):
    """Surf: dark noise swelling and ebbing (0.6-1.4 swells per second)."""
    time = np.arange(size) / sampling_rate
    swell = np.sin(np.pi * ((0.6 + 0.8 * excite) * time + rng.uniform())) ** 4
    return coloured_noise(size, 1.5, sampling_rate, rng) * swell


def rain_texture(size, sampling_rate, excite, rng):
    """Rain: a dense Poisson shower of tiny droplet clicks (40-120 per second)."""
    times = poisson_times(40 + 80 * excite, size / sampling_rate, rng)
    drops = impulse_train(times, rng.uniform(0.3, 1.0, times.size), size, sampling_rate)
    return np.convolve(drops, decaying_burst(0.006, 0.0015, sampling_rate, rng))[:size]


def fire_texture(size, sampling_rate, excite, rng):
    """Fire: sparse crackles of heavy-tailed loudness over a flickering low roar."""
    times = poisson_times(6 + 18 * excite, size / sampling_rate, rng)
    pops = impulse_train(times, rng.pareto(1.5, times.size) + 0.2, size, sampling_rate)
    crackle = np.convolve(pops, decaying_burst(0.004, 0.0008, sampling_rate, rng))[:size]
    roar = coloured_noise(size, 2.0, sampling_rate, rng) * slow_envelope(size, 8.0, sampling_rate, rng)
    return crackle / (np.std(crackle) + 1e-12) + 0.5 * roar


def birds_texture(size, sampling_rate, excite, rng):
    """Birdsong: quick high chirps sweeping up or down (2-6 per second)."""
    out = np.zeros(size)
    for onset in poisson_times(2 + 4 * excite, size / sampling_rate, rng):
        time = np.arange(int(rng.uniform(0.05, 0.12) * sampling_rate)) / sampling_rate
        start_hz, end_hz = rng.uniform(1800, 4200, 2)
        sweep = start_hz + (end_hz - start_hz) * time / time[-1]
        chirp = np.sin(2 * np.pi * np.cumsum(sweep) / sampling_rate) * np.sin(np.pi * time / time[-1]) ** 2
        begin = int(onset * sampling_rate)
        out[begin : begin + chirp.size] += chirp[: size - begin]
    return out


def bells_texture(size, sampling_rate, excite, rng):
    """Bells: a faint high shimmer of beating partials, the after-ring of the tower."""
    time = np.arange(size) / sampling_rate
    partial = rng.uniform(2500, 4000)
    beat = rng.uniform(2.0, 5.0) * (0.5 + excite)
    return np.sin(2 * np.pi * partial * time) * np.sin(np.pi * beat * time) ** 2


def city_texture(size, sampling_rate, excite, rng):
    """Traffic: a low rumble rising and falling as vehicles pass."""
    return coloured_noise(size, 2.0, sampling_rate, rng) * slow_envelope(size, 1.0 + excite, sampling_rate, rng)


def forest_texture(size, sampling_rate, excite, rng):
    """Leaves: mid-high rustling noise (centred at 1.5-4 kHz) in quick irregular gusts."""
    rustle = band_noise(size, rng.uniform(1500, 4000), 1.5, sampling_rate, rng)
    return rustle * slow_envelope(size, 6.0, sampling_rate, rng)


def machine_texture(size, sampling_rate, excite, rng):
    """Machinery: metallic ticks on a strictly periodic clock (6-16 per second)."""
    period = 1.0 / ((6 + 10 * excite) * rng.uniform(0.9, 1.1))
    times = np.arange(rng.uniform(0, period), size / sampling_rate, period)
    time = np.arange(int(0.01 * sampling_rate)) / sampling_rate
    tick = np.sin(2 * np.pi * rng.uniform(1500, 3500) * time) * np.exp(-time / 0.002)
    return np.convolve(impulse_train(times, np.ones(times.size), size, sampling_rate), tick)[:size]


TEXTURES: dict[str, Callable] = {
    "waves": waves_texture,
    "rain": rain_texture,
    "fire": fire_texture,
    "birds": birds_texture,
    "bells": bells_texture,
    "city": city_texture,
    "forest": forest_texture,
    "machine": machine_texture,
}


def hz_to_mel(frequency: np.ndarray) -> np.ndarray:
    """The HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(frequency) / 700.0)


@lru_cache(maxsize=8)
def envelope_bands(n_fft: int, sampling_rate: int, bands: int = ENVELOPE_BANDS) -> tuple[np.ndarray, np.ndarray]:
    """Triangular, half-overlapping mel bands whose centres span 0 Hz to Nyquist, over the rfft bins of ``n_fft``.

    Returns the (bands, bins) weight matrix and the (bins, bands) matrix that interpolates band values linearly
    (in mel) back to the bins; the triangles are also these interpolation weights, so the two are transposes.
    """
    mel = hz_to_mel(np.fft.rfftfreq(n_fft, 1.0 / sampling_rate))
    centres = np.linspace(0.0, mel[-1], bands)
    weights = np.clip(1.0 - np.abs(mel[None, :] - centres[:, None]) / (centres[1] - centres[0]), 0.0, None)
    return weights, weights.T


def stft(signal: np.ndarray, n_fft: int) -> np.ndarray:
    """Short-time spectra (frames, bins): square-root periodic Hann windows at 50% overlap, zero-padded ends."""
    hop = n_fft // 2
    padded = np.pad(signal, (n_fft, n_fft + (-signal.size) % hop))
    starts = np.arange(0, padded.size - n_fft + 1, hop)
    return np.fft.rfft(padded[starts[:, None] + np.arange(n_fft)] * sqrt_hann(n_fft), axis=1)


def istft(spectra: np.ndarray, n_fft: int, size: int) -> np.ndarray:
    """Inverse of :func:`stft` by weighted overlap-add (the two square-root Hann windows sum to exactly 1)."""
    hop = n_fft // 2
    frames = np.fft.irfft(spectra, n=n_fft, axis=1) * sqrt_hann(n_fft)
    out = np.zeros(hop * (len(frames) - 1) + n_fft)
    for index, frame in enumerate(frames):
        out[index * hop : index * hop + n_fft] += frame
    return out[n_fft : n_fft + size]


def sqrt_hann(n_fft: int) -> np.ndarray:
    """Square root of the periodic Hann window (perfect reconstruction at 50% overlap)."""
    return np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))


def target_envelope(bands: int, tilt_db_per_band: float) -> np.ndarray:
    """A smooth target spectral envelope: band power falling by ``tilt_db_per_band`` dB per band, summing to 1."""
    power = 10.0 ** (-tilt_db_per_band * np.arange(bands) / 10.0)
    return power / power.sum()


def normalise_spectral_envelope(signal: np.ndarray, sampling_rate: int, tilt_db_per_band: float) -> np.ndarray:
    """Give every 32 ms frame of ``signal`` the same coarse spectral envelope, keeping each frame's energy.

    Per frame and wide mel band, a gain brings the band's share of the frame energy to the target's; gains are
    interpolated smoothly across frequency (capped at +-40 dB), so fine structure (harmonics, partial ratios, pitch
    glides, vibrato) and the temporal envelope pass while the coarse spectral shape, which would otherwise name the
    class (a whistle is duller than a buzz, crackle sits high), is the same for every class, in any frame and hence
    in every long-term average (of power, magnitude or log power).
    """
    n_fft = 2 * round(ENVELOPE_FFT * sampling_rate / 32000)  # 32 ms, even (50% overlap must be exact)
    weights, interpolate = envelope_bands(n_fft, sampling_rate)
    spectra = stft(signal, n_fft)
    band_power = np.einsum("fk,bk->fb", np.abs(spectra) ** 2, weights) + 1e-20
    share = band_power / band_power.sum(axis=1, keepdims=True)
    gain_db = np.clip(10.0 * np.log10(target_envelope(weights.shape[0], tilt_db_per_band) / share), -40.0, 40.0)
    return istft(spectra * 10.0 ** (np.einsum("fb,kb->fk", gain_db, interpolate) / 20.0), n_fft, signal.size)


def channel_response(signal: np.ndarray, sampling_rate: int, rng: np.random.Generator, depth_db: float) -> np.ndarray:
    """Pass ``signal`` through a random smooth filter, as every recording has its own microphone and room colour.

    The gain in dB is a sum of random cosines over the mel axis (periods from the whole range down to 1/12 of it),
    about ``depth_db`` dB standard deviation: a nuisance that makes the fine long-term spectrum of a clip
    unreliable as a class cue without touching its temporal structure.
    """
    spectrum = np.fft.rfft(signal)
    mel = hz_to_mel(np.fft.rfftfreq(signal.size, 1.0 / sampling_rate))
    cycles = np.arange(1, 13)
    amplitudes = rng.normal(0.0, depth_db * np.sqrt(2.0 / cycles.size), cycles.size)
    phases = rng.uniform(0, 2 * np.pi, cycles.size)
    gain_db = np.einsum("c,ck->k", amplitudes, np.cos(2 * np.pi * cycles[:, None] * mel / mel[-1] + phases[:, None]))
    return np.fft.irfft(spectrum * 10.0 ** (gain_db / 20.0), n=signal.size)


def brightness_tilt(arousal: float, rng: np.random.Generator) -> float:
    """Spectral tilt in dB per envelope band: 2.0 (dull) when calm to 0.8 (bright) when aroused, jittered."""
    return 2.0 - 1.2 * excitement(arousal) + rng.normal(0.0, 0.25)


def loudness_db(arousal: float, rng: np.random.Generator) -> float:
    """Target RMS level in dBFS: -32 when calm to -18 when aroused, jittered by up to 3 dB (recording level)."""
    return -32.0 + 14.0 * excitement(arousal) + rng.uniform(-3.0, 3.0)


def render_audio(
    content: str, valence: float | None, arousal: float, duration: float, sampling_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mono float32 audio in [-1, 1] and the melody's onset times (s), which the picture flashes on.

    The mix: the class voice playing the melody, the common chord pad, the class texture and a faint room tone; then
    the spectral-envelope normalisation, a random channel colour and the arousal loudness. ``valence=None`` hides
    the valence (see the module docstring).
    """
    score = compose_score(valence, arousal, duration, rng)
    size = int(round(duration * sampling_rate))
    melody = unit_rms(render_melody(VOICES[content], score, duration, sampling_rate, rng))
    chord = unit_rms(render_chord(score, duration, sampling_rate, rng))
    texture = unit_rms(TEXTURES[content](size, sampling_rate, excitement(arousal), rng))
    room = coloured_noise(size, 1.0, sampling_rate, rng)
    mix = melody + 0.5 * chord + 0.6 * texture + ROOM_TONE * room
    mix = normalise_spectral_envelope(mix, sampling_rate, brightness_tilt(arousal, rng))
    mix = unit_rms(channel_response(mix, sampling_rate, rng, CHANNEL_DB))
    mix *= 10.0 ** (loudness_db(arousal, rng) / 20.0)
    peak = np.max(np.abs(mix))
    if peak > 0.99:
        mix *= 0.99 / peak
    return mix.astype(np.float32), score.onsets
