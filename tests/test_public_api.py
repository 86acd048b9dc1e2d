"""The public import surface: what `vaemotion` and `vaemotion.training` export, and that importing stays light."""

import subprocess
import sys

import pytest

import vaemotion
import vaemotion.training


@pytest.mark.parametrize("package", [vaemotion, vaemotion.training], ids=["vaemotion", "vaemotion.training"])
def test_every_exported_name_resolves_and_is_listed(package):
    for name in package.__all__:
        assert getattr(package, name) is not None, name
        assert name in dir(package), name
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        package.Nope


def test_the_trainers_import_as_trl_users_write_them():
    from vaemotion.training import EmoAdapterConfig, EmoAdapterTrainer, VGAlignConfig, VGAlignTrainer
    from transformers import Trainer, TrainingArguments

    assert issubclass(VGAlignTrainer, Trainer) and issubclass(EmoAdapterTrainer, Trainer)
    assert issubclass(VGAlignConfig, TrainingArguments) and issubclass(EmoAdapterConfig, TrainingArguments)
    assert vaemotion.training.train_stage1.__module__ == "vaemotion.training.vg_align"


def test_importing_the_package_loads_neither_trainers_nor_plotting():
    code = (
        "import sys, vaemotion, vaemotion.training\n"
        "heavy = ('vaemotion.training.vg_align', 'vaemotion.training.emo_adapter', 'vaemotion.benchmark.harness',\n"
        "         'vaemotion.synth', 'matplotlib', 'evaluate')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert completed.stdout.strip() == "[]"
