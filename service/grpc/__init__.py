"""The gRPC door: the Open Inference Protocol service, the native service, health and reflection."""
