"""``didi``: the parser (every command declared by its one-line summary; only the command being run declares its
options, :func:`build_parser`) and :func:`main`, which turns errors into exit codes: a
:class:`~didi.errors.DidiError` is one line and exit 2, a run stopped by SIGINT/SIGTERM
(:class:`~didi.errors.RunInterrupted`) exits with 130/143 after its snapshot."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..errors import DidiError, RunInterrupted
from . import commands as c
from .commands import SUMMARIES

COMMANDS: list[tuple[str, Callable, Callable]] = [
    ("quickstart", c._add_quickstart, c._run_quickstart),
    ("train", c._add_train, c._run_train),
    ("train-ar", c._add_train_ar, c._run_train_ar),
    ("distill", c._add_distill, c._run_distill),
    ("info", c._add_info, c._run_info),
    ("sample", c._add_sample, c._run_sample),
    ("convert", c._add_convert, c._run_convert),
    ("export", c._add_export, c._run_export),
    ("eval", c._add_eval, c._run_eval),
    ("cache", c._add_cache, c._run_cache),
    ("serve", c._add_serve, c._run_serve),
]


def build_parser(command: str | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The ``didi`` parser with the options of ``command`` (every command's with ``full``).

    The other commands are declared by their summary only (:data:`SUMMARIES`): declaring their options would
    import their configs, hence torch, and take about a second that ``didi --help`` does not need. A command
    without a summary is always declared in full.
    """
    parser = argparse.ArgumentParser(
        prog="didi",
        description="Ultra-fast language generation with masked diffusion LMs: train an MDLM teacher, distill a "
                    "few-step student with DiDi-Instruct, sample and evaluate.",
        epilog="Run `didi COMMAND --help` for the options of a command. Start with `didi quickstart`.")
    parser.add_argument("--version", action="version", version=f"didi {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add, run in COMMANDS:
        if full or name == command or name not in SUMMARIES:
            add(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
        sub.choices[name].set_defaults(_run=run)
    return parser


def _version() -> str:
    from ..version import __version__

    return __version__


def _report_interrupted(exc: RunInterrupted) -> None:
    """The interruption line on the main process; every rank waits for it before exiting (torchrun stops the
    remaining workers as soon as one exits non-zero)."""
    from ..runtime import distributed

    if distributed.is_main():
        print(f"[didi] {exc}", file=sys.stderr)
    distributed.barrier()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        args._run(args)
    except RunInterrupted as exc:
        _report_interrupted(exc)
        return exc.exit_code
    except DidiError as exc:
        print(f"didi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("didi: interrupted", file=sys.stderr)
        return 130
    return 0
