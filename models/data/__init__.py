"""Pieces of the offline trimodal digit dataset; the public API is :mod:`fusionserve.models.data.dataset`."""
