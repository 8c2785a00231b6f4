"""Errors Finegrain raises on purpose. The CLI turns each into a one-line message, never a traceback."""


class FinegrainError(Exception):
    """Base class: the message alone must tell the user what is wrong and, where it can, what to do."""


class DataError(FinegrainError, ValueError):
    """Input data that cannot be used: a missing file, a missing column, an unparseable value."""


class StackError(FinegrainError):
    """A local-stack server that cannot be started, reached or stopped."""
