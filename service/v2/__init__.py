"""The Open Inference Protocol (KServe V2), independent of transport.

``codec`` turns wire tensors (JSON, the binary tensor extension, raw bytes)
into numpy arrays and back; ``mapping`` says what fusionserve's tensors mean
(modalities in, predictions and embeddings out); ``infer`` runs one V2
inference against the data plane. The REST and gRPC doors only translate.
"""
