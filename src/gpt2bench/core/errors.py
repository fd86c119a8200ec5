"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""


def one_line(exc: BaseException) -> str:
    """An exception as the single line a results row or a worker message records."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]


class BenchError(Exception):
    """A failure the user can act on (model not found, unwritable output...). Exit code 1."""

    exit_code = 1


class UsageError(BenchError):
    """The command line or config asked for something invalid. Exit code 2, like argparse."""

    exit_code = 2


class MissingExtraError(BenchError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, what: str, module: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed: pip install 'gpt2bench[{extra}]'"
        )
        self.module = module
        self.extra = extra
