"""Error types that the CLI maps to exit codes.

`UserError` is bad input (a recipe, a flag, a missing file): the CLI prints its one-line
message and exits 2 without a traceback. `RunFailure` is a failure at run time (exit 1).
"""


class UserError(Exception):
    """Bad input that the user can fix; the message names the problem and the fix."""


class RunFailure(Exception):
    """A failure at run time (divergence, a crashed worker): exit code 1."""
