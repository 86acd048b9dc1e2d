"""`vaemotion train stage1|stage2 --config FILE.yaml [--any_config_field VALUE ...]`.

The YAML file holds fields of the stage's config dataclass (`VGAlignConfig` or `EmoAdapterConfig`, both
`TrainingArguments`); flags given after it override the file, so every field can be set either way.
"""

import argparse
import importlib

import yaml

# stage -> module defining CONFIG_CLASS and train_from_config(config) -> output directory
STAGES = {
    "stage1": "vaemotion.training.vg_align",
    "stage2": "vaemotion.training.emo_adapter",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=sorted(STAGES), help="stage1: VG-Align; stage2: EmoAdapter")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="--config FILE.yaml, then any config field as a flag (e.g. --learning_rate 1e-4)",
    )


def parse_stage_config(stage: str, options: list[str]):
    """The stage's config from ``--config FILE.yaml`` (if given) overridden by the remaining flags."""
    from transformers import HfArgumentParser

    module = importlib.import_module(STAGES[stage])
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, flags = pre.parse_known_args(options)
    parser = HfArgumentParser(module.CONFIG_CLASS)
    if known.config:
        with open(known.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{known.config}: the YAML file must hold a mapping of config fields")
        fields = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise SystemExit(f"{known.config}: unknown config field(s) {unknown} for {module.CONFIG_CLASS.__name__}")
        parser.set_defaults(**values)
        for action in parser._actions:  # a field set in the file no longer has to be given as a flag
            if action.dest in values:
                action.required = False
    (config,) = parser.parse_args_into_dataclasses(args=flags)
    return module, config


def run(args) -> int:
    module, config = parse_stage_config(args.stage, args.options)
    output_dir = module.train_from_config(config)
    print(f"{args.stage} finished: {output_dir}")
    return 0
