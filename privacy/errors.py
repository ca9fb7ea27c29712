"""The error every homebody failure a user can cause derives from.

It lives on the lowest floor so that every folder can raise it; the CLI turns any
`HomebodyError` into one line on stderr and a non-zero exit.
"""


class HomebodyError(Exception):
    """A failure with a message meant for the user (bad input, wrong key, spent budget...)."""

    exit_code: int = 1
