"""The model contract in one place.

- :mod:`service.model.config`: ``config.yaml`` as a schema, and the graph's inputs;
- :mod:`service.model.rows`: one request row as a door received it and as decoded;
- :mod:`service.model.feeds`: decoded rows → the graph's input tensors (collation);
- :mod:`service.model.outputs`: the graph's outputs → predictions and embeddings;
- :mod:`service.model.repository`: the entries of a model repository on disk.
"""
