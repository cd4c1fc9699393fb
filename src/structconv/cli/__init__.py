"""``structconv`` command line: ``structconv {profile,train,decompose,eval,bench,export,compare} ...``.

Each subcommand is a thin argparse wrapper in its own module here, torchvision-references
style: ``get_args_parser(add_help=True)`` and ``main(args) -> int``; the work is done by the
library (``structconv.training``, ``.evaluation``, ``.benchmark``, ``.export``, ...).  This
package is the only place that reads ``sys.argv``.  Modules are imported only when their
subcommand runs, so ``structconv --help`` stays fast.

Failures the user can fix (a bad value, a missing or unwritable file) print one line naming
the culprit and exit with status 2; an interrupted run exits with 130.  Anything else keeps
its traceback: it is a bug.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import validation
from ._args import CommandError, Parser

# subcommand -> (module, one-line help)
COMMANDS = {
    "profile": ("structconv.cli.profile", "count adds/mults/params of a (structured) model, beside the paper's tables"),
    "train": ("structconv.cli.train", "train baseline / Step 1 with Structural Regularization / direct / fine-tune"),
    "decompose": ("structconv.cli.decompose", "decompose a structured checkpoint (Step 2) into its deployment form"),
    "eval": ("structconv.cli.eval", "evaluate a checkpoint on a dataset"),
    "bench": ("structconv.cli.bench", "time dense vs decomposed models (interleaved medians)"),
    "export": ("structconv.cli.export", "export a decomposed model to TorchScript and ONNX"),
    "compare": (
        "structconv.cli.compare",
        "structured convolutions vs pruning, low-rank and narrow nets, at equal cost",
    ),
}


def _load(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    return module.get_args_parser, module.main


def flag_names(parser: argparse.ArgumentParser, aliases: dict[str, str] | None = None) -> dict[str, str]:
    """``{Python argument name: flag}`` for the library errors of a command: each option's
    ``dest`` spelled as its long flag (the one matching ``--dest`` if there are several),
    positionals as their metavar, then the command's own ``aliases`` (for library arguments
    named differently from the option that sets them)."""
    names: dict[str, str] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        if action.dest in (None, "help", argparse.SUPPRESS):
            continue
        if action.option_strings:
            wanted = "--" + action.dest.replace("_", "-")
            longs = [o for o in action.option_strings if o.startswith("--")] or list(action.option_strings)
            names.setdefault(action.dest, wanted if wanted in longs else max(longs, key=len))
        else:
            names.setdefault(action.dest, (action.metavar or action.dest).upper())
    names.update(aliases or {})
    return names


def build_parser(command: str | None = None) -> Parser:
    from .. import __version__

    parser = Parser(prog="structconv", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"structconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if name == command:
            parser_fn, _ = _load(name)
            sub.add_parser(name, parents=[parser_fn(add_help=False)], help=help_text, description=help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return sub.choices[command]


def _one_line(err: BaseException, names: dict[str, str]) -> str:
    """The error as one line; a library error's Python argument names are spelled as ``names`` (the flags)."""
    if isinstance(err, validation.Message):
        text = err.render(names, owner=False)
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed on one line
        return done.code if isinstance(done.code, int) else 0
    _, main_fn = _load(args.command)
    module = importlib.import_module(COMMANDS[args.command][0])
    names = flag_names(_command_parser(parser, args.command), getattr(module, "ARGUMENT_FLAGS", None))
    try:
        status = main_fn(args)
    except KeyboardInterrupt as err:
        detail = f": {_one_line(err, names)}" if str(err) else ""
        print(f"structconv {args.command}: interrupted{detail}", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError) as err:
        print(f"structconv {args.command}: error: {_one_line(err, names)}", file=sys.stderr)
        return 2
    return int(status or 0)
