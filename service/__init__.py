"""fusionserve: an inference server for multimodal fusion models."""

__version__ = "0.1.0"
