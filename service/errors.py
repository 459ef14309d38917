"""Domain errors: one small hierarchy, each class carrying the status it maps to."""

import re

MAX_MESSAGE_CHARS = 1024
"""Longest message an error carries: it travels in the status' trailing metadata, whose size
gRPC bounds (8 KiB by default), and a client must receive the real error, not a metadata one."""
MAX_SHOWN_CHARS = 80
"""Longest rendering of one echoed value (a field's value, an id, a name) in a message."""
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


class Summary(str):
    """What stands in an error for a value too big to echo, such as `3 images`: shown as
    `<3 images>`, never quoted as if the caller had sent that text."""

    def __repr__(self) -> str:
        return f"<{self}>"


def counted(count: int, noun: str, detail: str = "") -> Summary:
    """`1 image`, `3 images`, `12 bytes of GIF`: a count as an error shows it."""
    text = f"{count} {noun}{'' if count == 1 else 's'}"
    return Summary(f"{text} {detail}" if detail else text)


def shown(value: object) -> str:
    """`repr(value)`, shortened to MAX_SHOWN_CHARS: how an error echoes what a caller sent."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def clean_message(message: str) -> str:
    """The message without terminal escapes or control characters (torch's messages carry
    ANSI colours), cut to MAX_MESSAGE_CHARS."""
    text = _ESCAPES.sub("", message)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 20] + f"... ({len(text)} chars)"
    return text


class TorchwireError(Exception):
    """Base of every error the service reports to its callers.

    `status` is the name of the gRPC status code the API layer maps it to; the
    core itself never imports grpc.
    """

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        message = clean_message(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(TorchwireError):
    """A request field is malformed; the message names the field and the value."""

    status = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, name: str, value: object, why: str) -> "InvalidArgument":
        """Builds the standard message: `<field>=<value!r>: <why>`, the value shortened."""
        return cls(f"{name}={shown(value)}: {why}")


class NotFound(TorchwireError):
    """A named model, version, job or dataset does not exist."""

    status = "NOT_FOUND"


class AlreadyExists(TorchwireError):
    """Something of that name exists already."""

    status = "ALREADY_EXISTS"


class FailedPrecondition(TorchwireError):
    """The request is well-formed but the target is in the wrong state."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(TorchwireError):
    """A configured limit is reached; the message names the limit."""

    status = "RESOURCE_EXHAUSTED"


class Unauthenticated(TorchwireError):
    """The call carries no valid bearer token."""

    status = "UNAUTHENTICATED"


class DeadlineExceeded(TorchwireError):
    """The caller's deadline passed before the work was done."""

    status = "DEADLINE_EXCEEDED"


class Unavailable(TorchwireError):
    """The server is shutting down."""

    status = "UNAVAILABLE"


class StartupError(Exception):
    """The server cannot start as configured (its port or store is taken, a path is missing);
    the message is one line for the operator."""
