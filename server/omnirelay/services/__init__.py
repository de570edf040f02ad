"""One module per gRPC service: translation between protobuf and the core, nothing more."""
