"""The `vaemotion` command line.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``; the
module is imported only when its subcommand runs, so `vaemotion --help` stays fast and a heavy dependency of one
command never breaks another.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS = {
    "demo": ("vaemotion.demo", "run the whole method end to end on ArtEmo-Synth (CPU, minutes)"),
    "synth": ("vaemotion.synth.cli", "write an ArtEmo-Synth benchmark folder of synchronized clips"),
    "train": ("vaemotion.training.cli", "train Stage 1 (VG-Align) or Stage 2 (EmoAdapter) from a YAML config"),
    "cache-teacher": ("vaemotion.training.cache_cli", "precompute the visual teacher's responses and top-k log-probs"),
    "eval": ("vaemotion.benchmark.cli", "score a model on ArtEmoBenchmark (audio-only, visual-only, audio-visual)"),
    "push": ("vaemotion.hub", "push a trained model, its processor, code and model card to the Hub"),
}


def _version() -> str:
    from . import __version__

    return __version__


def build_parser(load: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the subcommand named by ``load`` gets its full argument set (imports its module)."""
    parser = argparse.ArgumentParser(prog="vaemotion", description="VAEmotionLLM: learning to hear by seeing.")
    parser.add_argument("--version", action="version", version=f"vaemotion {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == load:
            module = _import_command(module_name, name)
            if module is not None:
                module.add_arguments(sub)
    return parser


def _import_command(module_name: str, name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise  # a real missing dependency inside the command: show it
        return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(load=command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = _import_command(SUBCOMMANDS[args.command][0], args.command)
    if module is None:
        print(f"vaemotion {args.command}: not available in this version yet.", file=sys.stderr)
        return 2
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
