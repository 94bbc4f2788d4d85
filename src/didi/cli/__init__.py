"""The ``didi`` command line: :mod:`.main` (the parser and :func:`main`), :mod:`.commands` (one ``_add_<name>`` /
``_run_<name>`` pair per command) and :mod:`.options` (options from typed config dataclasses).

Each sub-command is two small functions: ``_add_<name>(subparsers)`` declares its options (most generated from a
typed config dataclass by :func:`add_config_arguments`) and ``_run_<name>(args)`` calls the library. Errors the
user can fix are :class:`didi.errors.DidiError`; they are printed as one line and exit with status 2. A run
stopped by SIGINT/SIGTERM (:class:`didi.errors.RunInterrupted`) exits with 130/143 after its snapshot.

Only the options of the command being run are declared (:func:`build_parser`): declaring them imports the
recipes and torch, which ``didi --help`` does not need (it lists the commands from :data:`SUMMARIES`).
"""
from .main import SUMMARIES, build_parser, main
from .options import add_config_arguments, config_from_args

__all__ = ["SUMMARIES", "add_config_arguments", "build_parser", "config_from_args", "main"]
