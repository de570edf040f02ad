"""omnirelay: a gRPC-native gateway in front of LLM providers."""
