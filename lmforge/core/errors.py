"""The one error type users see: a one-line message naming the problem, and a hint naming the fix."""


class LmforgeError(Exception):
    """A problem with the user's input or environment. The CLI prints it as one line and exits with 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
