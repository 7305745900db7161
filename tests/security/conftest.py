"""Fixtures shared by the hostile-input tests (issue 15).

The server fixtures themselves live in ``tests/conftest.py``; this file exists so
both helpers working on issue 15 can add tests to ``tests/security/`` without
clashing over its creation.
"""
