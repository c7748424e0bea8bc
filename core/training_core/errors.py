"""Typed errors that cross component boundaries; no raw driver exception leaves an adapter."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose; ``str()`` is fit for a user."""


class NotFound(AgentError):
    def __init__(self, kind: str, key: object) -> None:
        super().__init__(f"{kind} {key} not found")
        self.kind = kind
        self.key = key


class InvalidState(AgentError):
    """A conditional update lost: the record is not in the state the caller expected."""

    def __init__(self, kind: str, key: object, expected: object, actual: object) -> None:
        super().__init__(f"{kind} {key} is '{actual}', expected {expected}")
        self.kind = kind
        self.key = key
        self.expected = expected
        self.actual = actual


class Conflict(AgentError):
    """A uniqueness rule refused the write (e.g. a second active run for one project)."""


class StoreUnavailable(AgentError):
    """The database (or Supabase) cannot be reached or timed out; retrying later may work."""


class BlobError(AgentError):
    """A blob storage operation failed for good (after retries where they apply)."""


class BlobUnavailable(BlobError):
    """The bucket could not be reached (or kept failing) through every retry; later may work."""


class BlobNotFound(BlobError, NotFound):
    def __init__(self, url: str) -> None:
        NotFound.__init__(self, "object", url)
        self.url = url


class BlobExists(BlobError, Conflict):
    """A create-only write found the object already there."""

    def __init__(self, url: str) -> None:
        Conflict.__init__(self, f"object {url} already exists")
        self.url = url


class InvalidInput(AgentError):
    """The user's input (URL, archive, dataset, metadata) is wrong; retrying will not help."""


class BlobTooLarge(BlobError, InvalidInput):
    """An object is bigger than the configured maximum; retrying will not help."""


class ChecksumMismatch(BlobError):
    """The bytes received (or stored) do not match the object's crc32c."""


class InsufficientDiskSpace(AgentError):
    """Not enough free space on the scratch volume for a download or an extraction."""
