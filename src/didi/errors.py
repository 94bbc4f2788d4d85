"""User-facing errors (and :class:`RunInterrupted`, the outcome of a run stopped by a signal).

Every problem caused by the user's input (a bad option, a missing or corrupt file, an empty corpus, a
vocabulary mismatch, a NaN loss) raises a :class:`DidiError`. The CLI prints its message as a single line
prefixed with ``didi: error:`` and exits with status 2; nothing on disk is modified after it is raised.
"""


class DidiError(Exception):
    """Base class for errors that are reported to the user as one clear line."""


class ConfigError(DidiError, ValueError):
    """An invalid option value. The message starts with the option name, e.g. ``--nfe: must be >= 1``."""


class DataError(DidiError):
    """A corpus that cannot be read: missing path, empty, not UTF-8, unknown name."""


class CheckpointError(DidiError):
    """A run directory or checkpoint that is missing, truncated, of the wrong kind or mismatched."""


class TrainingError(DidiError):
    """Training cannot continue (e.g. a non-finite loss); the last good checkpoint is kept."""


class RunInterrupted(Exception):
    """A training or distillation run stopped by SIGINT/SIGTERM after writing its snapshot at ``step``.

    Not an error (the run can be resumed), but not a finished run either: the CLI prints the message and exits
    with ``exit_code`` = 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the shell convention.
    """

    def __init__(self, signum: int, step: int, steps: int, resume: str) -> None:
        self.signum, self.step, self.steps = signum, step, steps
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(f"interrupted at step {step} of {steps} ({name}): snapshot written; continue with "
                         f"`{resume}`")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def option_error(option: str, message: str) -> ConfigError:
    """Build a :class:`ConfigError` naming a CLI option: ``option_error("nfe", "must be >= 1")``."""
    name = option if option.startswith("--") else "--" + option.replace("_", "-")
    return ConfigError(f"{name}: {message}")


def require(condition: bool, option: str, message: str) -> None:
    """Raise :func:`option_error` unless ``condition`` holds."""
    if not condition:
        raise option_error(option, message)
