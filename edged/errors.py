"""Errors a user can cause, each with the exit code the CLI reports.

Exit codes (documented in the README):
    0  success
    1  unrecoverable runtime error (a bug, or the machine failing underneath us)
    2  usage, configuration or input error: something the user passed can be fixed
    3  ``require_accelerator`` is set and the NPU could not be used
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_ACCELERATOR = 3


class EdgedError(Exception):
    """Base of every error edged reports to a user as one line."""

    exit_code = EXIT_RUNTIME


class UsageError(EdgedError):
    """Bad command line, bad config, or an input file that cannot be used as given."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A configuration value is wrong; the message names its key path."""


class DarknetError(UsageError):
    """A darknet cfg or weights file does not describe a network we can export."""


class CalibrationError(UsageError):
    """No usable calibration images for full-integer quantization."""


class ModelError(UsageError):
    """A model file or its sidecar is missing, corrupt, or does not fit together."""


class ExportError(EdgedError):
    """The TFLite converter or Vela failed on a network we accepted."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: foreign code
    (TFLite runtimes, delegates, TensorFlow) raises errors with empty or multi-line messages."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__
