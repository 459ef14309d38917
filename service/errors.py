"""Domain errors: one small hierarchy, each class carrying the status it maps to."""


class TorchwireError(Exception):
    """Base of every error the service reports to its callers.

    `status` is the name of the gRPC status code the API layer maps it to; the
    core itself never imports grpc.
    """

    status = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TorchwireError):
    """A request field is malformed; the message names the field and the value."""

    status = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, name: str, value: object, why: str) -> "InvalidArgument":
        """Builds the standard message: `<field>=<value!r>: <why>`."""
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return cls(f"{name}={shown}: {why}")


class NotFound(TorchwireError):
    """A named model, version, job or dataset does not exist."""

    status = "NOT_FOUND"


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
