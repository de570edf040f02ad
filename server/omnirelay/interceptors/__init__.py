"""gRPC server interceptors, outermost first as wired in app.py."""
