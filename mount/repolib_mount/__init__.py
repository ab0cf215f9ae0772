"""The repolib FUSE daemon (pyfuse3 + trio). Installed with ``repolib[mount]``.

The core library never imports this package; the ``repolib mount`` commands reach the CLI
through an entry point that this package provides.
"""

__all__: list[str] = []
