"""The `ats-hf` command line. Each subcommand lives in the module of its concern, which provides
`add_arguments(parser)` and `run(args) -> int`."""

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "benchmark": ("ats_hf.benchmark", "Compare dense, ATS, top-K and random: accuracy, GMACs, throughput."),
    "visualize": ("ats_hf.visualize", "Draw the patches each ATS layer keeps for an image."),
    "convert": ("ats_hf.convert", "Turn a plain ViT/DeiT checkpoint into a shareable ATS checkpoint."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the named subcommand's module is imported (all of them when `command` is None)."""
    parser = argparse.ArgumentParser(prog="ats-hf", description="Adaptive Token Sampling for transformers ViTs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(module_name=module_name)
        if command is None or command == name:
            importlib.import_module(module_name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv)
    return importlib.import_module(args.module_name).run(args)


if __name__ == "__main__":
    sys.exit(main())
