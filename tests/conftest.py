"""Test layers: ``unit/`` (gmm_core, validation, emflow), ``gpu/``, ``integration/``.

Shared fixtures live in plugins under ``tests/support/`` (on ``sys.path`` through pytest's
``pythonpath`` setting), helpers in the modules beside them.
"""

pytest_plugins = ["support.fixtures"]
