"""``structconv`` command line: ``structconv {profile,train,decompose,eval,bench,export} ...``.

Each subcommand lives in its own module, torchvision-references style: the module defines
``get_args_parser(add_help=True) -> argparse.ArgumentParser`` and ``main(args) -> int | None``.
Modules are imported only when their subcommand runs, so ``structconv --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "profile": ("structconv.profile", "count adds/mults/params of a (structured) model, beside the paper's tables"),
    "train": ("structconv.train", "train baseline / Step 1 with Structural Regularization / direct / fine-tune"),
    "decompose": ("structconv.evaluate", "decompose a structured checkpoint (Step 2) into its deployment form"),
    "eval": ("structconv.evaluate", "evaluate a checkpoint on a dataset"),
    "bench": ("structconv.bench", "time dense vs decomposed models (interleaved medians)"),
    "export": ("structconv.export", "export a decomposed model to TorchScript and ONNX"),
}


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit status 2."""


def _load(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    parser_fn = getattr(module, f"get_{command}_args_parser", None) or module.get_args_parser
    main_fn = getattr(module, f"{command}_main", None) or module.main
    return parser_fn, main_fn


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structconv", description=__doc__.splitlines()[0])
    from . import __version__

    parser.add_argument("--version", action="version", version=f"structconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        if name == command:
            parser_fn, _ = _load(name)
            sub.add_parser(name, parents=[parser_fn(add_help=False)], help=help_text, description=help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    _, main_fn = _load(args.command)
    try:
        status = main_fn(args)
    except (CommandError, ValueError, FileNotFoundError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"structconv {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"structconv {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    raise SystemExit(main())
