"""The ``pydantic-toast`` command: apply the packaged migrations to a database.

Usage::

    pydantic-toast migrate [URL] [--revision head]   # upgrade (URL defaults to $DATABASE_URL)
    pydantic-toast downgrade [URL] --revision base    # undo
    pydantic-toast current [URL]                      # show the applied revision
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic_toast._url import mask_url
from pydantic_toast.integrations.alembic import SCRIPT_LOCATION

__all__ = ["alembic_config", "main"]


def alembic_config(url: str) -> object:
    """An Alembic ``Config`` for the packaged migrations, without any alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.cmd_opts = argparse.Namespace(x=[f"url={url}"])
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="pydantic-toast", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, default in (("migrate", "head"), ("downgrade", None), ("current", None)):
        command = commands.add_parser(name)
        command.add_argument("url", nargs="?", default=os.environ.get("DATABASE_URL"))
        if name != "current":
            command.add_argument("--revision", default=default, required=default is None)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("give a database URL or set DATABASE_URL")
    try:
        from alembic import command as alembic_command
    except ImportError:
        print("pydantic-toast migrate needs Alembic: pip install 'pydantic-toast[postgresql]'")
        return 2
    config = alembic_config(args.url)
    if args.command == "migrate":
        alembic_command.upgrade(config, args.revision)  # type: ignore[arg-type]
        print(f"{mask_url(args.url)} is at {args.revision}")
    elif args.command == "downgrade":
        alembic_command.downgrade(config, args.revision)  # type: ignore[arg-type]
    else:
        alembic_command.current(config)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
