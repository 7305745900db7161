"""The model contract in one place.

- :mod:`fusionserve.service.model.config`: ``config.yaml`` as a schema, and the graph's inputs;
- :mod:`fusionserve.service.model.rows`: one request row as a door received it and as decoded;
- :mod:`fusionserve.service.model.feeds`: decoded rows → the graph's input tensors (collation);
- :mod:`fusionserve.service.model.outputs`: the graph's outputs → predictions and embeddings;
- :mod:`fusionserve.service.model.repository`: the entries of a model repository on disk.
"""
