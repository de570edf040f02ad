"""Generated protobuf and gRPC code for omnirelay.v1 (do not edit; run `make protos`)."""
