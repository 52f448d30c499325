"""The error type of the user's input or environment, below every module that raises it (the CLI catches it)."""


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""
