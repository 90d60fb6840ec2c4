"""The `ats-hf` command line, and everything that must load without torch.

This package imports the standard library only, so that `ats-hf --help` answers at once and a command checks its
options and paths before anything heavy loads: importing `ats_hf` loads torch and transformers (the package
registers its Auto classes), which takes seconds. A subcommand's module (`ats_hf_cli.commands.NAME`) is imported
only once that subcommand is chosen; it provides `add_arguments(parser)` and `run(args) -> int`, and imports the
tools of `ats_hf` inside `run`, after its checks.

Expected mistakes (a missing file, a bad option value, an empty dataset, a model that cannot be loaded) are
reported as one line, `ats-hf COMMAND: error: ...`, with exit status 2: argparse errors, and `UsageError`s that a
subcommand raises. Any other exception is a bug and keeps its traceback.
"""

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

PROG = "ats-hf"
# The commands that share their work over a launcher's processes.
MULTI_PROCESS_COMMANDS = ("benchmark", "tune", "calibrate")
SUBCOMMANDS = {  # name -> one-line help; the module is ats_hf_cli.commands.<name>
    "benchmark": "Compare dense, ATS, top-K, random and ToMe: accuracy, GMACs, throughput.",
    "tune": "Choose ATS settings for a GMACs budget, accuracy drop or measured speed-up (vs ToMe).",
    "calibrate": "Propose the static mode's capacities from the kept counts on images.",
    "export": "Write a verified ONNX folder of the static mode (model.onnx, config, processor).",
    "convert": "Turn a plain checkpoint of any ATS family into a shareable ATS checkpoint.",
    "visualize": "Draw the patches each ATS layer keeps for an image.",
}


class UsageError(Exception):
    """A mistake in what the user asked for: `main` prints the message as one line and exits with status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage of a subcommand can fill a screen)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@contextlib.contextmanager
def usage_errors(*types: type[Exception], context: str = "") -> Iterator[None]:
    """Inside the block, turn exceptions of `types` (which a known, user-facing check raises) into `UsageError`s,
    with `context` (e.g. "cannot load --model 'x'") before the first line of their message."""
    try:
        yield
    except types as error:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"{context}: {message}" if context else message) from error


def build_parser(command: str | None = None) -> Parser:
    """The parser. Only `command`'s module is imported, to add its options; with None, none is."""
    parser = Parser(prog=PROG, description="Adaptive Token Sampling for transformers ViTs.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"ats_hf_cli.commands.{name}")
            module.add_arguments(subparser)
            subparser.set_defaults(run=module.run)
    parser.commands = subparsers.choices
    return parser


def _check_launcher(command: str) -> None:
    """Refuse a command that runs on one process only when a launcher (torchrun, accelerate launch) started several:
    each would do the whole work and write the same files."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and command not in MULTI_PROCESS_COMMANDS:
        raise UsageError(f"{command} runs on one process, but a launcher started {world_size} (WORLD_SIZE); run it "
                         f"without torchrun / accelerate launch (on several: {', '.join(MULTI_PROCESS_COMMANDS)})")


def main(argv: list[str] | None = None) -> int:
    """Run `ats-hf ARGV`; returns the exit status (0 ok, 2 usage error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    if command and not sys.stderr.isatty() and "transformers" not in sys.modules:
        # Progress bars redrawn with '\r' are noise in a log; the commands print plain progress lines instead.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser(command)
    try:
        if command:  # its own parser, which takes the positional arguments among the options in any order
            args, unknown = parser.commands[command].parse_known_intermixed_args(argv[1:])
            args.command = command
        else:
            args, unknown = parser.parse_known_args(argv)
        if unknown:  # reported by the subcommand, so that its --help is the one pointed to
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exit_:  # --help, or an argparse error already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        _check_launcher(args.command)
        return args.run(args)
    except UsageError as error:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # data the user gave that cannot be read mid-run (ats_hf.evaluation's own type)
        if not getattr(error, "user_data_error", False):
            raise
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
