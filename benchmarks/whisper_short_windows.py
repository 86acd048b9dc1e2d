"""Whisper on short clips without 30 s of padding: how far the encoder's states move, and what it saves.

Real Whisper checkpoints take 30 s windows (3000 mel frames, 1500 encoder positions). With
`VAEmotionProcessor(pad_audio_to_window=False)` a clip is padded only to the batch's longest and the encoder runs on
the frames given, with a prefix of its position table (`vaemotion.modeling_vaemotion.whisper_encode_prefix`). Whisper
was trained on padded windows only, so its states on the clip's frames change; this measures by how much, on the
real Whisper tiny.en and base encoders, for clips of several lengths, against the padded form:

* cosine similarity per frame (mean and 5th percentile over the clip's encoder frames);
* relative L2 difference ``|short - padded| / |padded|`` over the clip's frames;
* the same for the states after VAEmotion's pooling (stride 2: what the projector sees);
* the encoder's wall time, padded / short (median of 5).

Sounds: an ArtEmo-Synth soundtrack (music-like) and, when `espeak-ng` is on PATH, a spoken sentence.

Run::

    python benchmarks/whisper_short_windows.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import WhisperFeatureExtractor, WhisperModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from real_parts import real_part_path  # noqa: E402

from vaemotion.media import load_audio  # noqa: E402
from vaemotion.modeling_vaemotion import whisper_encode_prefix  # noqa: E402
from vaemotion.synth import generate_benchmark  # noqa: E402

SECONDS = (1.0, 2.0, 5.0, 10.0)


def sounds(workdir: Path) -> dict[str, np.ndarray]:
    generate_benchmark(workdir / "synth", 4, duration=10.0, classes=["bells", "city"], num_options=2, media="image",
                       progress=False)  # fmt: skip
    out = {"synth soundtrack": load_audio(str(sorted((workdir / "synth").rglob("*.wav"))[0]), 16000)}
    if shutil.which("espeak-ng"):
        wav = workdir / "speech.wav"
        text = "The storm rolled over the quiet harbour, and the bells rang out across the water until dawn."
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
        speech = load_audio(str(wav), 16000)
        out["espeak-ng speech"] = np.concatenate([speech, np.zeros(max(0, 160000 - len(speech)), np.float32)])
    return out


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(encoder, extractor, samples: np.ndarray) -> dict:
    padded = extractor(samples, sampling_rate=16000, return_tensors="pt")["input_features"]
    short = extractor(samples, sampling_rate=16000, padding="longest", truncation=False, return_tensors="pt")[
        "input_features"
    ]
    with torch.no_grad():
        full_states = encoder(padded).last_hidden_state
        short_states = whisper_encode_prefix(encoder, short)
        frames = short_states.shape[1]
        reference = full_states[:, :frames]
        pooled = [F.avg_pool1d(states.transpose(1, 2), 2, 2).transpose(1, 2) for states in (reference, short_states)]
        cosine = F.cosine_similarity(reference, short_states, dim=-1).flatten()
        pooled_cosine = F.cosine_similarity(*pooled, dim=-1).flatten()
        time_ratio = median_seconds(lambda: encoder(padded)) / median_seconds(lambda: whisper_encode_prefix(encoder, short))
    return {
        "frames": frames,
        "cos_mean": cosine.mean().item(),
        "cos_p5": cosine.quantile(0.05).item(),
        "rel_l2": ((short_states - reference).norm() / reference.norm()).item(),
        "pooled_cos_mean": pooled_cosine.mean().item(),
        "pooled_rel_l2": ((pooled[1] - pooled[0]).norm() / pooled[0].norm()).item(),
        "time_ratio": time_ratio,
    }


def main() -> None:
    torch.manual_seed(0)
    print(f"CPU x{torch.get_num_threads()} threads, float32")
    with tempfile.TemporaryDirectory() as tmp:
        clips = sounds(Path(tmp))
    for part in ("whisper-tiny.en", "whisper-base"):
        folder = real_part_path(part)
        encoder = WhisperModel.from_pretrained(folder).get_encoder().eval()
        extractor = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
        print(f"\n{part} (d_model {encoder.config.d_model}, {len(encoder.layers)} layers)")
        print("  sound              clip   frames  cos mean  cos p5  rel L2 | pooled cos  pooled rel L2 | padded/short time")
        for name, samples in clips.items():
            for seconds in SECONDS:
                row = compare(encoder, extractor, samples[: int(seconds * 16000)])
                print(f"  {name:<18} {seconds:4.0f} s  {row['frames']:6d}  {row['cos_mean']:8.3f}  {row['cos_p5']:6.3f}"
                      f"  {row['rel_l2']:6.3f} | {row['pooled_cos_mean']:10.3f}  {row['pooled_rel_l2']:13.3f} |"
                      f" {row['time_ratio']:6.1f}x")


if __name__ == "__main__":
    main()
