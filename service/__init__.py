"""fusionserve: an inference server for multimodal fusion models."""

import os

# ONNX Runtime's Linux wheels (1.29 on) carry Microsoft's OneDS telemetry: with
# it on, a serving process looked up mobile.events.data.microsoft.com from new
# threads while it started and while it answered (strace, ORT 1.32). A server
# must not report what it runs to a third party, nor spend threads and DNS
# lookups trying. ORT reads this once, when its environment is created, so it
# is set before anything imports onnxruntime; an operator may set it to 0.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
