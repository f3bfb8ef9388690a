"""kv_cli: the ``kv`` command (typer). The source folder is ``cli/``; pyproject.toml installs it as
``kv_cli`` (``package-dir``), a name no other project is likely to take, so import ``kv_cli``.

It parses arguments, calls ``kvstore.client`` (or ``kvstore.server.run_node`` for ``kv serve``), prints,
and picks an exit code: 0 ok, 1 the operation failed, 2 usage error. It holds no protocol logic.
Modules: ``main`` (the app and the client commands), ``cluster`` (a local cluster of ``kv serve``
processes), ``output`` (simple/json/table formats), ``common`` (endpoints, errors, the client factory).
"""
