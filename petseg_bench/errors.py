"""User-facing errors: the CLI prints these as one line, never as a traceback."""


class PetsegError(Exception):
    """A problem with the user's input (a file, an option, a plugin) described in one line."""


class DataError(PetsegError):
    """A data file or folder is missing or unreadable; the message names it."""


class PluginError(PetsegError):
    """A plugin could not be loaded, validated or found."""
