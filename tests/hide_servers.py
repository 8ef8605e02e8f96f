"""A pytest plugin that hides every server source: no Docker, no local binaries.

Used by tests/integration/test_server_discovery.py (``-p tests.hide_servers``) to see what a
machine with nothing installed gets.
"""

from __future__ import annotations

import shutil

from tests import servers

_which = shutil.which


def _no_servers(name: str, *args: object, **kwargs: object) -> str | None:
    if name in ("redis-server", "initdb", "pg_ctl"):
        return None
    return _which(name, *args, **kwargs)  # type: ignore[arg-type]


servers.docker_answers = lambda timeout=2.0: False  # type: ignore[assignment]
servers._pg_bin = lambda name: None  # type: ignore[assignment]
shutil.which = _no_servers  # type: ignore[assignment]
