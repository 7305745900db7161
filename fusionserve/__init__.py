"""``python -m fusionserve``: the command line under the project's own name.

The import packages are still ``service`` and ``models``; this package only
gives the command a module to run.
"""
