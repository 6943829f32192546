"""The one error every endpoint answers with: an HTTP status, a stable reason code, and what was wrong."""

from __future__ import annotations


class ApiError(Exception):
    """A request the service refuses: HTTP status, stable reason code, message, and the file concerned."""

    def __init__(
        self, status: int, reason: str, message: str, *, file: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.file, self.index = status, reason, message, file, index
