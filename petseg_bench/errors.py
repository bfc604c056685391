"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class PetsegError(Exception):
    """A problem with the user's input (a file, an option, a plugin) described in one line."""


class DataError(PetsegError):
    """A data file or folder is missing or unreadable; the message names it."""


class PluginError(PetsegError):
    """A plugin could not be loaded, validated or found."""


def one_line(exc: BaseException, limit: int = 300, default: str | None = None) -> str:
    """The first line of an exception's message, cut to ``limit`` characters, for
    one-line errors; ``default`` (else the exception's type name) when it has none."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else (default if default is not None else type(exc).__name__)
    return text if len(text) <= limit else text[:limit - 3] + "..."
