"""Packaging for VAEmotion: a pretrained vision-language model learns to hear by seeing, then to feel."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "vaemotion" / "__init__.py").read_text()).group(1)

# Compatible ranges. transformers: the suite runs on 5.24 (constraints.txt pins the exact tested set); the model,
# processor, pipeline and both trainers' tests also pass on 5.25 (benchmarks/RESULTS.md, session 8). A pushed
# checkpoint's remote code loads and answers on 5.20 to 5.25 (tests/test_hub.py under each release installed by
# scripts/fetch_transformers_releases.sh; differences live in vaemotion/transformers_compat.py), but the package's
# trainers and YAML configs use TrainingArguments fields new in 5.24 (activation_checkpointing), hence its floor.
INSTALL_REQUIRES = [
    "torch>=2.9",
    "torchvision>=0.24",  # transformers' video processors cannot be built without it
    "transformers>=5.24,<5.26",
    "huggingface_hub>=2.0,<3",
    "accelerate>=1.10",
    "safetensors>=0.6",
    "numpy>=1.26",
    "pillow>=10",
    "av>=14",
    "soundfile>=0.12",
    "scipy>=1.11",
    "pyyaml>=6",
    "tqdm>=4.66",
    "datasets>=5.2,<6",
    "peft>=0.21,<0.22",
    "matplotlib>=3.8",
]

EXTRAS = {
    "metrics": ["evaluate>=0.4.6,<0.5"],
    "dev": ["evaluate>=0.4.6,<0.5", "pytest>=8", "pytest-timeout>=2.3", "scikit-learn>=1.4", "parameterized>=0.9"],
}

setup(
    name="vaemotion",
    version=VERSION,
    description="VAEmotionLLM for transformers: vision-guided audio alignment (VG-Align), an emotion adapter "
    "(EmoAdapter) and ArtEmoBenchmark tooling",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vaemotion", "vaemotion.*"]),
    package_data={"vaemotion": ["benchmark/metrics/*/*.py", "benchmark/metrics/*/README.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vaemotion=vaemotion.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
