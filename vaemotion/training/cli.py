"""`vaemotion train stage1|stage2 --config FILE.yaml [--any_config_field VALUE ...]`.

The YAML file holds fields of the stage's config dataclass (`VGAlignConfig` or `EmoAdapterConfig`, both
`TrainingArguments`); flags given after it override the file, so every field can be set either way.
"""

import argparse
import importlib
import math
import types
import typing

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
        values = read_yaml_config(known.config)
        fields = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise SystemExit(f"{known.config}: unknown config field(s) {unknown} for {module.CONFIG_CLASS.__name__}")
        hints = typing.get_type_hints(module.CONFIG_CLASS)
        wrong = [f"{name}: {value!r} is not {_type_name(hints[name])}" for name, value in values.items()
                 if name in hints and not _matches(value, hints[name])]  # fmt: skip
        if wrong:
            raise SystemExit(f"{known.config}: config field(s) of the wrong type: " + "; ".join(wrong))
        parser.set_defaults(**values)
        for action in parser._actions:  # a field set in the file no longer has to be given as a flag
            if action.dest in values:
                action.required = False
    (config,) = parser.parse_args_into_dataclasses(args=flags)
    return module, config


def read_yaml_config(path: str) -> dict:
    """The mapping of config fields a YAML file holds, or a SystemExit naming the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise SystemExit(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise SystemExit(f"{path}: is a folder, not a YAML config file") from None
    except UnicodeDecodeError as error:
        raise SystemExit(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        raise SystemExit(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: the YAML file must hold a mapping of config fields")
    return values


def _matches(value, hint) -> bool:
    """Whether a YAML value fits a config field's annotation. Strings always pass here: argparse converts them with
    the field's type and names the field when that fails (YAML reads ``1e-4``, without a dot, as a string).
    Annotations this does not know (enums, Any) accept anything; the config's own checks follow."""
    if isinstance(value, str):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return False
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint is list or origin is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return isinstance(value, list) and all(_matches(element, item) for element in value)
    return True


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(hint))
    names = {type(None): "null", bool: "true/false", int: "a whole number", float: "a finite number", str: "a string",
             dict: "a mapping"}  # fmt: skip
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is list or hint is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return f"a list of {_type_name(item)}" if item is not typing.Any else "a list"
    return getattr(hint, "__name__", str(hint))


def run(args) -> int:
    module, config = parse_stage_config(args.stage, args.options)
    output_dir = module.train_from_config(config)
    print(f"{args.stage} finished: {output_dir}")
    return 0
