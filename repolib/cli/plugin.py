"""What a command that joins the ``repolib`` CLI from another package may use.

Packages add commands through the ``repolib.cli`` entry point group (the mount does:
``repolib mount``, ``umount``, ``mount-stats``). This module is the documented surface they
build on, so the CLI's own modules can change without breaking them: the shared state (catalog
from ``--home`` / ``--catalog``), the key options and the one order of key lookup, the help
example convention and the table/JSON printers.
"""

from __future__ import annotations

from .common import (
    State,
    command_example,
    key_options,
    pass_state,
    print_json,
    print_table,
    require_cli_key,
)

__all__ = [
    "State",
    "command_example",
    "key_options",
    "pass_state",
    "print_json",
    "print_table",
    "require_cli_key",
]
