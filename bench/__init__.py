"""Benchmarks: omnirelay against a bare grpc.aio server on the same machine (`make bench`)."""
