"""The pure core: models and math that do no I/O.

Nothing under ``reconciler.core`` opens files, sockets or processes, or imports the
shell packages; ``tests/unit/test_core_is_pure.py`` enforces that.
"""
