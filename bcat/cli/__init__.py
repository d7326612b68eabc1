"""The ``bcat`` command line: a thin layer on top of the library, one module per command.

This file only routes. Every command module (``bcat/cli/*.py``) exposes ``add_cli(subparsers)``,
which registers its parser and sets ``func`` to a function taking the parsed arguments and
returning an exit code; the work itself happens in the library modules those functions call."""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.metadata
import logging
import os
import platform
import sys
import warnings

from bcat import __version__
from bcat.cli.arguments import option_flags
from bcat.errors import BcatError, OptionError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""Errors of a full disk or quota: reported in one line, like the user's errors."""

# (module, subcommand group or None). Order is the order of `bcat --help`.
COMMAND_MODULES = [
    ("bcat.cli.train", None),
    ("bcat.cli.plan", None),
    ("bcat.cli.eval", None),
    ("bcat.cli.demo", None),
    ("bcat.cli.diagnose", None),
    ("bcat.cli.study", None),
    ("bcat.cli.data", "data"),
]


def offline_by_default() -> None:
    """No network at run time: models and data come from local paths only."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


DEBUG_HELP = "show tracebacks for input errors and the libraries' deprecation warnings"


def version_line() -> str:
    """bcat's version and the versions of the stack it runs on, the line a bug report starts with.
    Read from the installed packages' metadata, so that nothing heavy is imported for it."""
    def installed(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    stack = ", ".join(f"{package} {installed(package)}" for package in ("torch", "transformers", "peft", "accelerate"))
    return f"bcat {__version__} (Python {platform.python_version()}, {stack})"


class PrintVersion(argparse.Action):
    """``--version``: argparse's own version action wraps the line to the terminal's width."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bcat", description="Batch-level Cross-lingual Alignment Tuning")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--version", action=PrintVersion,
                        help="print the versions of bcat, Python, torch, transformers, peft and accelerate, and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for module_name, group in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        target = sub
        if group is not None:
            if group not in groups:
                group_parser = sub.add_parser(group, help="data files: check, build, pairs")
                # `bcat data --debug check ...` too: --debug goes anywhere on the line
                group_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
                groups[group] = group_parser.add_subparsers(dest="data_command", required=True)
            target = groups[group]
        module.add_cli(target)
        for command in target.choices.values():
            # also after the subcommand (`bcat train --debug`); SUPPRESS keeps a `--debug` given before it
            if "--debug" not in command._option_string_actions:
                command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
            command.set_defaults(option_flags=option_flags(command))
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Options and ``key=value`` overrides in any order: argparse gives a command's ``overrides``
    only the first run of positionals, so the ``key=value`` items after an option are added to them
    in the order given (later ones win, as everywhere)."""
    args, rest = parser.parse_known_args(argv)
    overrides = [item for item in rest if "=" in item and not item.startswith("-")]
    unknown = [item for item in rest if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    offline_by_default()
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.debug:
        quiet_library_warnings()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        # The reader of the output stopped (`bcat data check F | head`): end quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports a process ended by a closed pipe
    except BcatError as e:
        _close_progress_bars()
        if args.debug:
            raise
        print(f"bcat: error: {message(e, getattr(args, 'option_flags', None))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        _close_progress_bars()
        if args.debug:
            raise
        print("bcat: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        _close_progress_bars()
        if args.debug:
            raise
        # The writers replace files and folders whole, so what was there before is still intact.
        where = f" writing {e.filename}" if e.filename else ""
        print(f"bcat: error: {e.strerror or 'the disk is full'}{where}; free some space and run the command again "
              "(a training run continues from its last checkpoint with --resume)", file=sys.stderr)
        return BcatError.exit_code


def message(error: BcatError, flags: dict[str, str] | None) -> str:
    """The error as a command-line user reads it: the library options it names spelled as the command's
    flags (``batch_size`` -> ``--batch-size``, :func:`bcat.cli.arguments.option_flags`)."""
    return error.render(flags) if isinstance(error, OptionError) else str(error)


def quiet_library_warnings() -> None:
    """Hide FutureWarnings: the libraries bcat drives announce their own API changes with them (often
    attributed to the bcat line that called them), which a bcat user cannot act on; bcat issues none.
    ``--debug`` shows them."""
    warnings.filterwarnings("ignore", category=FutureWarning)


def _close_progress_bars() -> None:
    """End the line of a progress bar left open by the error, so the message stands on its own line."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", None) or ()):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
