"""ArtEmo-Synth: the latent, both modalities' cues, the probes that show no trivial artefact names the class, the
benchmark layout, the media files and the CLI. Offline and small (a few seconds of generation)."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from vaemotion.cli import main
from vaemotion.configuration_vaemotion import ARTEMIS_EMOTIONS
from vaemotion.synth import (
    CONTENT_CLASSES,
    CUES,
    EMOTION_SECTORS,
    HIDDEN_CUE_RATE,
    emotion_from_valence_arousal,
    generate_benchmark,
    read_hidden_cues,
    sample_cues,
    sample_latents,
    synthesize,
    write_clip,
)
from vaemotion.synth.audio import istft, normalise_spectral_envelope, stft
from vaemotion.synth.generator import multiple_choice
from vaemotion.synth.io import write_atomically
from vaemotion.synth.visual import match_mean

SR = 16000
PROBE_CLIPS = 160  # 20 per class


# ----------------------------------------------------------------------------------------------- latent and emotion


@pytest.mark.parametrize(
    "valence, arousal, emotion",
    [
        (1.0, 0.3, "amusement"),
        (0.3, 1.0, "excitement"),
        (-0.3, 1.0, "anger"),
        (-1.0, 0.3, "fear"),
        (-1.0, -0.3, "disgust"),
        (-0.3, -1.0, "sadness"),
        (0.3, -1.0, "awe"),
        (1.0, -0.3, "contentment"),
    ],
)
def test_emotion_rule_is_one_category_per_45_degree_sector(valence, arousal, emotion):
    assert emotion_from_valence_arousal(valence, arousal) == emotion
    assert emotion_from_valence_arousal(0.5 * valence, 0.5 * arousal) == emotion  # the radius does not matter


def test_the_sectors_are_exactly_the_artemis_categories():
    assert sorted(EMOTION_SECTORS) == sorted(ARTEMIS_EMOTIONS)
    assert len(CONTENT_CLASSES) >= 8 and all(name.isalpha() and name.islower() for name in CONTENT_CLASSES)


def test_sampled_latents_are_balanced_consistent_and_inside_their_sectors():
    latents = sample_latents(160, np.random.default_rng(0))
    assert set(Counter(latent.content for latent in latents).values()) == {20}
    assert set(Counter(latent.emotion for latent in latents).values()) == {20}
    for latent in latents:
        assert emotion_from_valence_arousal(latent.valence, latent.arousal) == latent.emotion
        radius = np.hypot(latent.valence, latent.arousal)
        assert 0.35 - 1e-3 <= radius <= 1.0 + 1e-3 and max(abs(latent.valence), abs(latent.arousal)) <= 1.0
        angle = np.degrees(np.arctan2(latent.arousal, latent.valence)) % 45.0
        assert 4.9 <= angle <= 40.1  # 5-degree margin from both sector edges


# ----------------------------------------------------------------------------------------------- probe features
# Computed here from scratch, independent of the generator's code.


def luminance(frames):
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def mean_colour(frames):
    """The trivial visual artefact: the clip's mean RGB."""
    return frames.reshape(-1, 3).mean(axis=0)


def spatial_structure(frames):
    """A simple richer visual feature: log power of the luminance spectrum in 4 orientations x 4 scales + motion."""
    lum = luminance(frames)
    power = (np.abs(np.fft.fft2(lum - lum.mean(axis=(1, 2), keepdims=True))) ** 2).mean(axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(lum.shape[1]), np.fft.fftfreq(lum.shape[2]), indexing="ij")
    radius, orientation = np.hypot(fx, fy), np.mod(np.arctan2(fy, fx), np.pi)
    features = []
    for low, high in [(0.01, 0.06), (0.06, 0.12), (0.12, 0.25), (0.25, 0.8)]:
        for quarter in range(4):
            band = (radius >= low) & (radius < high) & (orientation // (np.pi / 4) == quarter)
            features.append(np.log10(power[band].mean() + 1e-8))
    motion = np.abs(np.diff(lum, axis=0)).mean() / (lum.std() + 1e-6)
    return np.array(features + [np.log10(motion + 1e-6)])


def mel_filterbank(n_fft=400, n_mels=40):
    mel = 2595 * np.log10(1 + np.fft.rfftfreq(n_fft, 1 / SR) / 700)
    edges = np.linspace(0, mel[-1], n_mels + 2)
    rising = (mel[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - mel[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.clip(np.minimum(rising, falling), 0, None)


def power_spectrogram(audio, n_fft=400, hop=160):
    """Whisper-like framing: 25 ms Hann windows every 10 ms."""
    starts = np.arange(0, len(audio) - n_fft + 1, hop)
    return np.abs(np.fft.rfft(audio[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft), axis=1)) ** 2


def log_mel_spectrum(audio):
    """The trivial audio artefact, as a log-mel encoder sees it: the long-term average of the log-mel spectrogram."""
    return np.log10(power_spectrogram(audio) @ mel_filterbank().T + 1e-10).mean(axis=0)


def magnitude_spectrum(audio):
    """The trivial audio artefact, raw: the long-term average magnitude spectrum (201 bins)."""
    return np.sqrt(power_spectrogram(audio)).mean(axis=0)


def modulation_statistics(audio):
    """A simple richer audio feature: modulation power of 8 band envelopes in 6 rate bands, spectral contrast."""
    mel_power = power_spectrogram(audio) @ mel_filterbank().T
    envelopes = np.log10(mel_power.reshape(len(mel_power), 8, 5).sum(axis=-1) + 1e-10)
    modulation = np.abs(np.fft.rfft(envelopes - envelopes.mean(axis=0), axis=0)) ** 2
    rates = np.fft.rfftfreq(len(envelopes), 0.01)
    edges = [0.4, 2, 4, 8, 16, 32, 50.1]
    bands = [(rates >= lo) & (rates < hi) for lo, hi in zip(edges, edges[1:])]
    features = [np.log10(modulation[band].mean(axis=0) + 1e-8) for band in bands]
    log_mel = np.log10(mel_power + 1e-10)
    return np.concatenate(features + [[log_mel.std(axis=1).mean()], log_mel.std(axis=0)[::4]])


def ridge_probe_accuracy(features, labels, train, penalty=1.0, test=None):
    """Accuracy on ``test`` (default: every clip outside ``train``) of a one-vs-rest ridge classifier trained on
    ``train``, on standardised features (closed form)."""
    test = ~train if test is None else test
    mean, std = features[train].mean(axis=0), features[train].std(axis=0) + 1e-8
    design = np.c_[(features - mean) / std, np.ones(len(features))]
    targets = np.eye(labels.max() + 1)[labels]
    gram = design[train].T @ design[train] + penalty * np.eye(design.shape[1])
    weights = np.linalg.solve(gram, design[train].T @ targets[train])
    predictions = (design @ weights).argmax(axis=1)
    return float(np.mean(predictions[test] == labels[test]))


MAJOR_TRIAD, MINOR_TRIAD = (0, 4, 7), (0, 3, 7)


def triad_quality(audio, bins_per_semitone=3):
    """Major-minus-minor triad match of the 60-400 Hz chroma (any root, any tuning): a simple mode cue."""
    magnitude = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    frequency = np.fft.rfftfreq(len(audio), 1 / SR)
    low = (frequency >= 60) & (frequency <= 400)
    bins = 12 * bins_per_semitone
    chroma = np.bincount(
        np.round(bins * np.log2(frequency[low] / 440.0)).astype(int) % bins, weights=magnitude[low], minlength=bins
    )
    chroma /= chroma.sum()

    def best_match(triad):
        template = np.zeros(bins)
        template[np.array(triad) * bins_per_semitone] = 1
        template = np.maximum.reduce([template, np.roll(template, 1), np.roll(template, -1)])  # +-1/3 semitone
        return max(np.roll(template, shift) @ chroma for shift in range(bins))

    return best_match(MAJOR_TRIAD) - best_match(MINOR_TRIAD)


@pytest.fixture(scope="module")
def probe_set():  # every cue shown: what each modality can carry
    clips = list(synthesize(PROBE_CLIPS, seed=11, duration=2.0, fps=8, size=32, hidden_cue_rate=0.0))
    labels = np.array([CONTENT_CLASSES.index(clip.latent.content) for clip in clips])
    train = np.arange(len(clips)) % 4 != 0  # latents come in random order: a random 75/25 split
    return clips, labels, train


# ----------------------------------------------------------------------------------------------- no trivial artefact


def test_mean_colour_does_not_name_the_class_but_spatial_structure_does(probe_set):
    clips, labels, train = probe_set
    trivial = ridge_probe_accuracy(np.array([mean_colour(clip.frames) for clip in clips]), labels, train)
    richer = ridge_probe_accuracy(np.array([spatial_structure(clip.frames) for clip in clips]), labels, train)
    assert trivial < 0.35, trivial  # chance is 0.125
    assert richer > 0.8, richer


def test_long_term_spectrum_does_not_name_the_class_but_modulation_statistics_do(probe_set):
    clips, labels, train = probe_set
    audio = [clip.audio.astype(np.float64) for clip in clips]
    log_mel = ridge_probe_accuracy(np.array([log_mel_spectrum(x) for x in audio]), labels, train)
    magnitude = ridge_probe_accuracy(np.array([magnitude_spectrum(x) for x in audio]), labels, train, penalty=10.0)
    richer = ridge_probe_accuracy(np.array([modulation_statistics(x) for x in audio]), labels, train)
    assert log_mel < 0.45 and magnitude < 0.45, (log_mel, magnitude)  # chance is 0.125
    assert richer > 0.75, richer


# ----------------------------------------------------------------------------------------------- shared latent


def correlation(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_picture_carries_valence_and_arousal(probe_set):
    clips, _, _ = probe_set
    valence = np.array([clip.latent.valence for clip in clips])
    arousal = np.array([clip.latent.arousal for clip in clips])
    brightness = [luminance(clip.frames).mean() for clip in clips]
    warmth = [clip.frames[..., 0].mean() - clip.frames[..., 2].mean() for clip in clips]
    rgb = [clip.frames.astype(np.float64) for clip in clips]
    saturation = [np.mean((x.max(-1) - x.min(-1)) / (x.max(-1) + 1e-6)) for x in rgb]
    motion = [np.abs(np.diff(luminance(clip.frames), axis=0)).mean() for clip in clips]
    assert correlation(brightness, valence) > 0.8
    assert correlation(warmth, valence) > 0.8
    assert correlation(saturation, arousal) > 0.8
    assert correlation(motion, arousal) > 0.3
    assert abs(correlation(brightness, arousal)) < 0.3  # brightness is the valence cue, not the arousal one


def test_sound_carries_valence_and_arousal(probe_set):
    clips, _, _ = probe_set
    valence = np.array([clip.latent.valence for clip in clips])
    arousal = np.array([clip.latent.arousal for clip in clips])
    loudness = [10 * np.log10(np.mean(clip.audio.astype(np.float64) ** 2)) for clip in clips]
    mode = [triad_quality(clip.audio.astype(np.float64)) for clip in clips]
    assert correlation(loudness, arousal) > 0.7
    assert abs(correlation(loudness, valence)) < 0.3
    assert correlation(mode, valence) > 0.4
    assert np.mean((np.array(mode) > np.median(mode)) == (valence > 0)) > 0.75


# ----------------------------------------------------------------------------------------------- hidden cues


def test_each_cue_is_hidden_at_its_rate_independently_of_the_others():
    cues = sample_cues(1000, np.random.default_rng(0), rate=0.3)
    hidden = np.array([[name in clip.hidden for name in CUES] for clip in cues], dtype=float)
    assert (hidden.sum(0) == 300).all()  # exactly round(rate * n) per cue
    both = hidden.T @ hidden / len(cues)  # P(both hidden) = rate**2 if independent (binomial spread about 0.015)
    off_diagonal = both[~np.eye(len(CUES), dtype=bool)]
    assert np.all(np.abs(off_diagonal - 0.09) < 0.03), both
    assert not [clip for clip in sample_cues(50, np.random.default_rng(0), rate=0.0) if clip.hidden]
    with pytest.raises(ValueError, match="hidden_cue_rate"):
        sample_cues(10, np.random.default_rng(0), rate=1.5)


@pytest.fixture(scope="module")
def hidden_probe_set():  # every cue hidden in half the clips
    clips = list(synthesize(PROBE_CLIPS, seed=12, duration=2.0, fps=8, size=32, hidden_cue_rate=0.5))
    return clips, {name: np.array([name in clip.cues.hidden for clip in clips]) for name in CUES}


def test_a_still_picture_hides_arousal_but_keeps_valence(hidden_probe_set):
    clips, hidden = hidden_probe_set
    valence = np.array([clip.latent.valence for clip in clips])
    arousal = np.array([clip.latent.arousal for clip in clips])
    brightness = np.array([luminance(clip.frames).mean() for clip in clips])
    rgb = [clip.frames.astype(np.float64) for clip in clips]
    saturation = np.array([np.mean((x.max(-1) - x.min(-1)) / (x.max(-1) + 1e-6)) for x in rgb])
    motion = np.array([np.abs(np.diff(luminance(clip.frames), axis=0)).mean() for clip in clips])
    still = hidden["picture_arousal"]
    assert correlation(saturation[~still], arousal[~still]) > 0.8
    assert abs(correlation(saturation[still], arousal[still])) < 0.3
    assert abs(correlation(motion[still], arousal[still])) < 0.3
    assert correlation(brightness[still], valence[still]) > 0.8


def test_a_mode_neutral_sound_hides_valence_but_keeps_arousal(hidden_probe_set):
    clips, hidden = hidden_probe_set
    valence = np.array([clip.latent.valence for clip in clips])
    arousal = np.array([clip.latent.arousal for clip in clips])
    loudness = np.array([10 * np.log10(np.mean(clip.audio.astype(np.float64) ** 2)) for clip in clips])
    mode = np.array([triad_quality(clip.audio.astype(np.float64)) for clip in clips])
    neutral = hidden["sound_valence"]
    assert correlation(mode[~neutral], valence[~neutral]) > 0.4
    assert abs(correlation(mode[neutral], valence[neutral])) < 0.25
    assert correlation(loudness[neutral], arousal[neutral]) > 0.7


def test_fog_hides_the_class_from_the_picture(hidden_probe_set):
    """A probe trained on pictures that show the class reads it on held-out pictures that show it, not on fog."""
    clips, hidden = hidden_probe_set
    labels = np.array([CONTENT_CLASSES.index(clip.latent.content) for clip in clips])
    features = np.array([spatial_structure(clip.frames) for clip in clips])
    fog = hidden["picture_content"]
    shown = np.flatnonzero(~fog)
    train = np.zeros(len(clips), bool)
    train[shown[: 2 * len(shown) // 3]] = True
    held_out_shown = ridge_probe_accuracy(features, labels, train, test=~train & ~fog)
    on_fog = ridge_probe_accuracy(features, labels, train, test=fog)
    assert held_out_shown > 0.6 and on_fog < 0.3, (held_out_shown, on_fog)  # chance is 0.125


def test_the_documented_rate_leaves_every_modality_most_items():
    assert 0 < HIDDEN_CUE_RATE <= 1 / 3


# ----------------------------------------------------------------------------------------------- building blocks


def test_match_mean_sets_the_motif_coverage():
    field = np.random.default_rng(0).random((4, 16, 16)) ** 3
    for target in (0.1, 0.25, 0.6):
        matched = match_mean(field, target)
        assert abs(matched.mean() - target) < 1e-4 and matched.min() >= 0 and matched.max() <= 1


def test_stft_round_trip_and_spectral_envelope_normalisation():
    signal = np.random.default_rng(0).normal(size=8000)
    np.testing.assert_allclose(istft(stft(signal, 512), 512, signal.size), signal, atol=1e-10)
    # a dark noise (power falling 6 dB per octave above 100 Hz) comes out with the coarse spectrum of a white one
    frequency = np.fft.rfftfreq(SR, 1 / SR)
    white = np.random.default_rng(1).normal(size=SR)
    dark = np.fft.irfft(np.fft.rfft(white) * np.where(frequency >= 100, 100 / np.maximum(frequency, 1), 0), n=SR)
    outputs = [normalise_spectral_envelope(x, SR, 1.0) for x in (dark, white)]
    octaves = [(250, 500), (1000, 2000), (3000, 6000)]
    shares = []
    for out in outputs:
        power = np.abs(np.fft.rfft(out)) ** 2
        shares.append(np.array([power[(frequency >= lo) & (frequency < hi)].sum() for lo, hi in octaves]) / power.sum())
    np.testing.assert_allclose(10 * np.log10(shares[0]), 10 * np.log10(shares[1]), atol=1.5)


def test_multiple_choice_options_are_distinct_and_hold_the_answer():
    rng = np.random.default_rng(0)
    for _ in range(50):
        options, answer = multiple_choice("fear", ARTEMIS_EMOTIONS, 4, rng)
        assert len(set(options)) == 4 and options[answer] == "fear" and set(options) <= set(ARTEMIS_EMOTIONS)


def test_an_interrupted_write_leaves_no_file(tmp_path):
    target = tmp_path / "clip.mp4"

    def failing_writer(temporary):
        temporary.write_bytes(b"half a file")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_atomically(target, failing_writer)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- layout and media

LAYOUT_FIELDS = {
    "id", "clip_id", "split", "video", "image", "audio", "task", "question", "options", "answer",
    "valence", "arousal", "emotion", "content",
}


def read_items(folder):
    return [json.loads(line) for line in (Path(folder) / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def file_hashes(folder):
    files = [path for path in Path(folder).rglob("*") if path.is_file()]
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    summary = generate_benchmark(folder, 16, seed=3, duration=1.0, fps=8, size=32, progress=False)
    return folder, summary


def test_benchmark_layout(small_benchmark):
    folder, summary = small_benchmark
    items = read_items(folder)
    assert summary["num_clips"] == 16 and summary["num_items"] == len(items) == 32
    assert len({item["id"] for item in items}) == 32
    by_clip = {}
    for item in items:
        assert set(item) == LAYOUT_FIELDS
        assert item["split"] in ("train", "test") and item["image"] is None and item["audio"] is None
        assert item["video"] == f"media/{item['clip_id']}.mp4" and (folder / item["video"]).is_file()
        assert len(item["options"]) == 4 and len(set(item["options"])) == 4
        assert item["options"][item["answer"]] == item[item["task"]]  # the answer is the clip's content / emotion
        assert -1 <= item["valence"] <= 1 and -1 <= item["arousal"] <= 1
        assert item["emotion"] == emotion_from_valence_arousal(item["valence"], item["arousal"])
        assert item["question"].islower()
        by_clip.setdefault(item["clip_id"], []).append(item)
    assert all(sorted(i["task"] for i in pair) == ["content", "emotion"] for pair in by_clip.values())
    emotion_options = {o for item in items if item["task"] == "emotion" for o in item["options"]}
    content_options = {o for item in items if item["task"] == "content" for o in item["options"]}
    assert emotion_options <= set(ARTEMIS_EMOTIONS) and content_options <= set(CONTENT_CLASSES)
    for split in ("train", "test"):  # stratified: every class on both sides
        assert {i["content"] for i in items if i["split"] == split} == set(CONTENT_CLASSES)
    assert not list(folder.rglob("*.partial"))
    assert sorted(p.name for p in folder.iterdir()) == ["cues.jsonl", "media", "metadata.jsonl"]
    cues = [json.loads(line) for line in (folder / "cues.jsonl").read_text().splitlines()]
    assert [record["clip_id"] for record in cues] == sorted(by_clip)
    assert read_hidden_cues(folder) == {record["clip_id"]: record["hidden"] for record in cues}
    assert read_hidden_cues(folder / "media") == {}  # a folder without cues.jsonl hides nothing
    counted = Counter(name for record in cues for name in record["hidden"])
    assert summary["hidden_cues"] == {name: counted[name] for name in CUES} == dict.fromkeys(CUES, round(0.3 * 16))


def test_a_clip_decodes_with_both_streams_and_the_right_length(small_benchmark):
    folder, _ = small_benchmark
    path = folder / read_items(folder)[0]["video"]
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = [frame for frame in container.decode(audio=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    assert audio[0].sample_rate == SR
    samples = sum(frame.samples for frame in audio)
    assert abs(samples - SR) <= 1024  # one AAC frame of encoder priming at most


def test_same_seed_same_files_other_seed_other_clips(small_benchmark, tmp_path):
    folder, _ = small_benchmark
    generate_benchmark(tmp_path / "again", 16, seed=3, duration=1.0, fps=8, size=32, progress=False)
    assert file_hashes(tmp_path / "again") == file_hashes(folder)  # metadata and media, bit for bit
    generate_benchmark(tmp_path / "other", 16, seed=4, duration=1.0, fps=8, size=32, progress=False)
    assert read_items(tmp_path / "other") != read_items(folder)


def test_parallel_workers_write_the_same_files(small_benchmark, tmp_path):
    folder, _ = small_benchmark
    generate_benchmark(tmp_path / "parallel", 16, seed=3, duration=1.0, fps=8, size=32, progress=False, num_workers=2)
    assert file_hashes(tmp_path / "parallel") == file_hashes(folder)


def test_metadata_does_not_depend_on_media_size(small_benchmark, tmp_path):
    folder, _ = small_benchmark
    generate_benchmark(tmp_path / "big", 16, seed=3, duration=0.5, fps=4, size=16, progress=False)
    assert read_items(tmp_path / "big") == read_items(folder)


def test_image_and_wav_media(tmp_path):
    generate_benchmark(tmp_path, 16, seed=1, duration=0.5, size=24, media="image", progress=False)
    item = read_items(tmp_path)[0]
    assert item["video"] is None
    assert Image.open(tmp_path / item["image"]).size == (24, 24)
    audio, rate = soundfile.read(tmp_path / item["audio"])
    assert rate == SR and audio.shape == (SR // 2,)


def test_write_clip_checks_its_input(tmp_path):
    audio = np.zeros(SR, np.float32)
    with pytest.raises(ValueError, match="even"):
        write_clip(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), audio, 8, SR)
    with pytest.raises(ValueError, match="uint8"):
        write_clip(tmp_path / "float.mp4", np.zeros((2, 16, 16, 3), np.float32), audio, 8, SR)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_clips": 12}, "2 per class"),
        ({"num_clips": 16, "size": 33}, "even"),
        ({"num_clips": 16, "classes": ["rain", "rain", "fire", "city"]}, "distinct"),
        ({"num_clips": 16, "classes": ["rain", "fire", "city"]}, "num_options"),
        ({"num_clips": 16, "sampling_rate": 100}, "sampling_rate must be a whole number of Hz >= 8000, got 100"),
        ({"num_clips": 16, "duration": float("nan")}, "duration and fps must be positive finite numbers"),
        ({"num_clips": 16, "duration": 0.1, "fps": 8.0}, "at least 2 frames"),
        ({"num_clips": 16, "seed": -1}, "seed must be a whole number >= 0"),
        ({"num_clips": 16, "num_workers": 0}, "num_workers must be a whole number >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_benchmark(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out" / "metadata.jsonl").exists()


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ValueError, match="output_dir: .*out exists and is not a folder"):
        generate_benchmark(tmp_path / "out", num_clips=16, progress=False)


def test_cli_writes_a_benchmark(tmp_path, capsys):
    code = main(["synth", "--output", str(tmp_path), "--num-clips", "8", "--seed", "5", "--duration", "0.5",
                 "--size", "16", "--fps", "4", "--classes", "rain", "fire", "city", "bells", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_items"] == 16 and summary["contents"] == {"bells": 2, "city": 2, "fire": 2, "rain": 2}
    assert len(read_items(tmp_path)) == 16
