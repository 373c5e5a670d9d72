"""The ``inspectq`` command: operations on a deployment (API keys, dead letters, the
reconciler) and on the model repositories. Commands only: each parses its arguments, builds
what it needs from ``Settings`` and calls a library function of ``api``, ``workers`` or
``triton_models``; no library imports this package.
"""
