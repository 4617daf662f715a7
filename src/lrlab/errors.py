"""The one exception type a user is meant to see: it becomes one line and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""
