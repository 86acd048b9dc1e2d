"""Shared test helpers: media files written on the fly with PyAV and soundfile (nothing is downloaded)."""

import av
import numpy as np
import pytest


def tone(seconds, sampling_rate, frequency=440.0, amplitude=0.5, onset=0.0):
    """A sine that is silent before ``onset`` seconds."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return np.where(t >= onset, amplitude * np.sin(2 * np.pi * frequency * t), 0.0).astype(np.float32)


def write_video(path, seconds=2.0, fps=10, size=(48, 64), audio=True, sampling_rate=44100, onset=None,
                video_codec="libx264", audio_codec="aac"):
    """A video whose frames turn from black to white at ``onset`` s, when a 440 Hz stereo tone starts."""
    onset = seconds / 2 if onset is None else onset
    height, width = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream(audio_codec, rate=sampling_rate)
            sound.layout = "stereo"
        for index in range(int(seconds * fps)):
            pixels = np.full((height, width, 3), 255 if index / fps >= onset else 0, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = tone(seconds, sampling_rate, onset=onset)
            stereo = np.stack([samples, samples])
            frame_size = sound.codec_context.frame_size or 1024
            for start in range(0, stereo.shape[1], frame_size):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(stereo[:, start : start + frame_size]), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = sampling_rate, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return str(path)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_clip(media_dir):
    """2 s of 10 fps H.264 + 44.1 kHz AAC; picture and tone both start at 1.0 s."""
    return write_video(media_dir / "clip.mp4")


@pytest.fixture(scope="session")
def silent_clip(media_dir):
    """A video without an audio stream."""
    return write_video(media_dir / "silent.mp4", audio=False)


# ------------------------------------------------------------------------------------------------ killed training
KILLED_WHILE_CHECKPOINTING = """
import os, signal, sys
from transformers import Trainer
from vaemotion.cli import main

stage, config, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
save_rng_state = Trainer._save_rng_state

def die_mid_checkpoint(self, output_dir):  # weights, optimizer and scheduler of this checkpoint are on disk
    if self.state.global_step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)  # no exception, no cleanup: as the OOM killer or a preemption does
    save_rng_state(self, output_dir)

Trainer._save_rng_state = die_mid_checkpoint
sys.exit(main(["train", stage, "--config", config]))
"""


def train_killed_while_checkpointing(stage: str, config: dict, kill_step: int, tmp_path):
    """`vaemotion train STAGE` on ``config`` in a process that SIGKILLs itself halfway through writing
    checkpoint-``kill_step`` (after the weights and optimizer state, before the RNG and trainer state)."""
    import os
    import subprocess
    import sys

    import yaml

    script, config_path = tmp_path / "killed.py", tmp_path / "killed.yaml"
    script.write_text(KILLED_WHILE_CHECKPOINTING)
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(script), stage, str(config_path), str(kill_step)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)  # fmt: skip


def assert_killed_run_resumes_to_the_uninterrupted_one(stage: str, config: dict, tmp_path, kill_step: int = 4):
    """Train ``config`` (with ``save_steps`` 2) straight through, and again killed while writing checkpoint
    ``kill_step`` and resumed with ``resume_from_checkpoint: last``: the half-written checkpoint does not count, the
    run restarts from the one before, and the per-step losses and the final weights equal the uninterrupted run's."""
    import json
    import signal
    from pathlib import Path

    import torch
    import yaml
    from safetensors.torch import load_file

    from vaemotion.cli import main
    from vaemotion.training.distill import is_complete_checkpoint, last_complete_checkpoint

    runs = {name: tmp_path / name for name in ("straight", "killed")}
    straight_config = tmp_path / "straight.yaml"
    straight_config.write_text(yaml.safe_dump({**config, "output_dir": str(runs["straight"])}))
    assert main(["train", stage, "--config", str(straight_config)]) == 0

    killed = train_killed_while_checkpointing(stage, {**config, "output_dir": str(runs["killed"])}, kill_step, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    half_written = runs["killed"] / f"checkpoint-{kill_step}"
    assert (half_written / "model.safetensors").exists() and not is_complete_checkpoint(half_written)
    assert last_complete_checkpoint(runs["killed"]) == str(runs["killed"] / f"checkpoint-{kill_step - 2}")
    assert not (runs["killed"] / "model.safetensors").exists()  # no final model either
    with pytest.raises(ValueError, match=f"checkpoint-{kill_step}: not a complete checkpoint"):  # named explicitly
        main(["train", stage, "--config", str(tmp_path / "killed.yaml"), "--resume_from_checkpoint", str(half_written)])

    assert main(["train", stage, "--config", str(tmp_path / "killed.yaml"), "--resume_from_checkpoint", "last"]) == 0

    def step_losses(run: Path) -> dict[int, float]:
        last = last_complete_checkpoint(run)
        history = json.loads((Path(last) / "trainer_state.json").read_text())["log_history"]
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    straight_losses, resumed_losses = step_losses(runs["straight"]), step_losses(runs["killed"])
    assert sorted(straight_losses) == list(range(1, config["max_steps"] + 1))
    assert resumed_losses.keys() == straight_losses.keys()
    for step, loss in straight_losses.items():
        assert resumed_losses[step] == pytest.approx(loss, rel=1e-4, abs=1e-6), step
    straight_weights, resumed_weights = (load_file(run / "model.safetensors") for run in runs.values())
    assert straight_weights.keys() == resumed_weights.keys()
    for name, weight in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], weight, rtol=1e-5, atol=1e-6, msg=name)
