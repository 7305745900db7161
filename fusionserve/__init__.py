"""fusionserve: the project's one import namespace.

- ``fusionserve.service``: the server, its HTTP/gRPC doors and the Python client
  (``from fusionserve.service.client import FusionClient``).
- ``fusionserve.models``: architectures, training, export and the default repository build.

In a checkout ``fusionserve/service`` and ``fusionserve/models`` are symlinks to the
top-level ``service/`` and ``models/`` folders; the wheel carries the files themselves.
``python -m fusionserve`` is the ``fusionserve`` command.
"""
