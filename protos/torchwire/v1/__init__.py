"""The torchwire.v1 contract: generated protobuf and gRPC stubs, and the tensor codec."""
