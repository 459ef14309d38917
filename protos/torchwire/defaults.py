"""Defaults that the server and its clients share: the address, the message limit, and the
channel options that set it."""

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""host:port where `torchwire serve` listens, and where clients look, unless told otherwise."""

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest gRPC message sent or received, on both ends."""


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Message size limits, set explicitly in both directions (for channels and servers)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
