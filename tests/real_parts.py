"""Where the real pretrained parts of scripts/fetch_real_parts.py live, for tests that want them.

They are test fixtures converted from registry packages (SmolLM2, Whisper tiny.en / base, DINOv2-S, the Qwen2.5
tokenizer, Whisper large-v3's front end); a test that needs one skips, with the command to run, when it is absent.
"""

import os
from pathlib import Path

import pytest


def _root():
    if os.environ.get("VAEMOTION_REAL_PARTS"):
        return Path(os.environ["VAEMOTION_REAL_PARTS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "vaemotion" / "real-parts"


REAL_PARTS_ROOT = _root()


def real_part_path(name):
    """The folder of the real part NAME (ready for `from_pretrained`); skips the calling test if it is not fetched."""
    path = REAL_PARTS_ROOT / name
    if not (path / ".complete").exists():
        pytest.skip(f"real part {name!r} not fetched: run python scripts/fetch_real_parts.py")
    return path
