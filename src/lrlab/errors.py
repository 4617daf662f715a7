"""The one exception type a user is meant to see: it becomes one line and exit status 2."""

MESSAGE_LIMIT = 400


class UsageError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


def first_names(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names`, each clipped, and '...' where there are more: a list for an error line."""
    return ", ".join(clip(name, 40) for name in names[:shown]) + (", ..." if len(names) > shown else "")


def clip(text: object, limit: int = 80) -> str:
    """`text` on one line and at most `limit` characters, cut between words with '...' where it was longer."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 3]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "..."
