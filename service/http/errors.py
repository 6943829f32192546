"""The one error every endpoint answers with: an HTTP status, a stable reason code, and what was wrong."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ApiError(Exception):
    """A request the service refuses: HTTP status, stable reason code, message, and the file concerned."""

    def __init__(
        self, status: int, reason: str, message: str, *, file: str | None = None, index: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.file, self.index = status, reason, message, file, index


def first_problem(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's (or FastAPI's) first validation error as "where: what", e.g. "query.top_k: ..."."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg')}"
