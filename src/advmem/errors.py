"""Error types that the CLI maps to exit codes.

`UserError` is bad input (a recipe, a flag, a missing file): the CLI prints its one-line
message and exits 2 without a traceback. `RunFailure` is a failure at run time (exit 1).
"""


class UserError(Exception):
    """Bad input that the user can fix; the message names the problem and the fix."""


class RunFailure(Exception):
    """A failure at run time (divergence, a crashed worker): exit code 1."""


class Interrupted(Exception):
    """A clean stop on SIGTERM/SIGINT; the CLI exits with 128 + the signal number (130, 143)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)

    def __reduce__(self):  # picklable, so a stop inside a worker process reaches the parent intact
        return (type(self), (str(self), self.signum))
