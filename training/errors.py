"""The training CLI's user-facing error."""


class TrainingError(RuntimeError):
    """A problem the user can fix; the CLI prints its message as one line and exits 2."""
