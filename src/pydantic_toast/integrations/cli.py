"""The ``pydantic-toast`` command: migrations, and the upkeep of stored records.

Every error is one line on stderr (``--verbose`` adds the traceback); URLs are printed with
their password masked. Exit codes: see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic_toast._exceptions import ExternalStorageError, StorageSchemaError
from pydantic_toast._url import StorageURL, mask_url
from pydantic_toast.backends.base import Capability, StorageBackend
from pydantic_toast.backends.registry import (
    POSTGRESQL_SCHEMES,
    backend_class_for,
    known_schemes,
    missing_extra,
    sqlalchemy_driver_hint,
)
from pydantic_toast.runtime.errors import sqlstate
from pydantic_toast.runtime.storage import Storage

__all__ = ["EXIT_CODES", "alembic_config", "main"]

EXIT_OK = 0
EXIT_STORAGE = 1
EXIT_USAGE = 2
EXIT_NOT_AT_HEAD = 3

EXIT_CODES = {
    EXIT_OK: "done; for check: reachable and at the head revision",
    EXIT_STORAGE: "the database could not be reached or refused the operation",
    EXIT_USAGE: "bad arguments or URL, or a missing optional dependency",
    EXIT_NOT_AT_HEAD: "check: reachable, but not migrated to the head revision",
}

_SQL_SCHEMES = (*POSTGRESQL_SCHEMES, "sqlite", "sqlite+aiosqlite")
_SCRIPT_LOCATION = "pydantic_toast:migrations"


class CommandError(Exception):
    """A failure the command reports in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Status:
    """What ``check`` found.

    Attributes:
        current: The applied revision (``None``: never migrated).
        head: The newest revision this version of the package ships.
        known: Whether ``current`` is one of the package's revisions (``False``: a newer
            pydantic-toast migrated the database).
        usable: Whether the library's own check of its tables passed.
        count_faults: What is wrong with the triggers that keep the record counts (read at
            the head revision only).
    """

    current: str | None
    head: str
    known: bool = True
    usable: bool = True
    count_faults: tuple[str, ...] = ()

    def unknown_revision(self, url: StorageURL) -> str:
        """The explanation, with the fix, of a revision this version does not ship."""
        return (
            f"{url.masked} is at revision {self.current}, which pydantic-toast {_version()} "
            f"does not know (its head: {self.head}): a newer pydantic-toast migrated it. "
            "Upgrade pydantic-toast here, or go back with the newer version: its "
            f"`pydantic-toast downgrade URL --revision {self.head}`"
        )


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for the packaged migrations, without any alembic.ini."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _SCRIPT_LOCATION)
    config.cmd_opts = argparse.Namespace(x=[f"url={url}"])
    return config


def _parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="pydantic-toast",
        description="Manage the external_records table that pydantic-toast stores models in "
        "(PostgreSQL and SQLite; Redis and memory:// need no migration).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "url",
        nargs="?",
        help="the storage URL, e.g. postgresql://user@host:5432/db or sqlite:///app.db "
        "(default: $DATABASE_URL)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="print the full traceback on errors"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the table (run this first)",
        description="Apply the packaged migrations up to a revision (default: head).",
    )
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    downgrade = commands.add_parser(
        "downgrade",
        parents=[common],
        help="undo migrations down to a revision",
        description="Undo the packaged migrations; --revision base drops the table and its data.",
    )
    downgrade.add_argument("--revision", required=True, help="target revision, e.g. base")
    commands.add_parser(
        "current",
        parents=[common],
        help="print the applied revision",
        description="Print the revision the database is at ('none' when never migrated).",
    )
    commands.add_parser(
        "check",
        parents=[common],
        help="report whether the database is reachable and migrated",
        description="Connect, then compare the applied revision with the packaged head. "
        f"Exits {EXIT_OK} when at head, {EXIT_NOT_AT_HEAD} when not, {EXIT_STORAGE} when "
        "unreachable.",
    )
    partition = commands.add_parser(
        "partition",
        parents=[common],
        help="hash-partition the PostgreSQL table by id (once, after migrate)",
        description="Rebuild external_records as a table hash-partitioned by id into "
        "--partitions partitions, in one transaction that locks the table while its rows are "
        "copied. Same name, columns, keys, indexes and comments; PostgreSQL only.",
    )
    partition.add_argument(
        "--partitions", type=int, required=True, help="how many partitions (2 to 1024)"
    )
    commands.add_parser(
        "recount",
        parents=[common],
        help="count every class's records again (after the count triggers were off)",
        description="Rebuild external_record_counts, which count() reads, from the rows of "
        "external_records, in one transaction; writers wait until it commits (PostgreSQL: "
        "SHARE ROW EXCLUSIVE, readers go on). Needed once the count triggers are back after "
        "being disabled or missing (check reports them).",
    )
    purge = commands.add_parser(
        "purge",
        parents=[common],
        help="delete expired records (ttl) from a PostgreSQL or SQLite table",
        description="Delete the rows whose ttl has passed (loads already treat them as "
        "missing), in batches of --batch-size rows, one short statement each; progress on "
        "stderr. Safe to interrupt and run again. Redis and memory:// expire records "
        "themselves.",
    )
    purge.add_argument(
        "--batch-size", type=int, default=1000, help="rows per statement (default: 1000)"
    )
    orphans = commands.add_parser(
        "orphans",
        parents=[common],
        help="report (or delete) the records of a class that no stored record references",
        description="Import the --module(s) that define your models, read the records of every "
        "class that can reference --class, page by page, then list the records of --class that "
        "none references (created before the scan started). The AI payloads and conversations "
        "in --class's store are read for references too; records of a class whose module is "
        "not imported are not, so --delete is then refused. Progress and a resume cursor on "
        "stderr; orphan ids on stdout. Works on every storage URL. With --payloads, list the "
        "offloaded payloads of --class that no record points to instead.",
    )
    _add_class_arguments(orphans, "to check", "the models")
    orphans.add_argument(
        "--payloads",
        action="store_true",
        help="check --class's offloaded payloads instead: those in its offload store that no "
        "record points to",
    )
    orphans.add_argument(
        "--min-age",
        type=float,
        default=600,
        help="with --payloads: seconds a payload must have existed to be reported (default: "
        "600; a younger one may belong to a save in flight)",
    )
    orphans.add_argument(
        "--delete",
        action="store_true",
        help="delete the orphans found; refused (nothing deleted) while the store holds "
        "records of a class whose model is not imported, or no imported model can reference "
        "--class",
    )
    orphans.add_argument(
        "--read-unimported",
        action="store_true",
        help="read the records of stored classes whose models are not imported as plain JSON "
        "for references, instead of refusing --delete (compressed, encrypted or offloaded "
        "records still refuse it)",
    )
    orphans.add_argument(
        "--no-referencing-classes",
        action="store_true",
        help="nothing references --class: with --delete, delete all its records not "
        "referenced from AI payloads or conversations",
    )
    _add_paging_arguments(orphans, "records per page")
    reencrypt = commands.add_parser(
        "reencrypt",
        parents=[common],
        help="rewrite a class's records under its current encryption key (after a rotation), "
        "or unencrypted when its keys are EncryptionKeys.decrypt_only(...) (to turn encryption "
        "off)",
        description="Import the --module(s) that define your models, then read the records of "
        "--class page by page and rewrite those not encrypted with the current key of the "
        "model's encryption (its keys come from the module, never from the command line; "
        "EncryptionKeys.decrypt_only(...) decrypts them: rewritten unencrypted), "
        "each page one write that checks revisions: a record changed meanwhile is skipped and "
        "counted. Offloaded payloads are downloaded only when they need rewriting. Progress "
        "and a resume cursor on stderr after each page; safe to interrupt and resume with "
        "--after. Works on every storage URL.",
    )
    _add_class_arguments(reencrypt, "to rewrite", "the model and its keys")
    _add_paging_arguments(reencrypt, "records per page and write")
    return parser


def _print_progress(counts: str, next_after: str | None) -> None:
    """One progress line on stderr: ``counts``, then the cursor to resume after, if any."""
    resume = f"; resume with --after {next_after}" if next_after else ""
    print(f"{counts}{resume}", file=sys.stderr, flush=True)


def _add_class_arguments(parser: argparse.ArgumentParser, purpose: str, defines: str) -> None:
    """``--class`` (the stored class name, ``purpose``) and ``--module`` (repeatable: the
    modules defining ``defines``): the options of a command that imports the user's models."""
    parser.add_argument(
        "--class", dest="class_name", required=True, help=f"the stored class name {purpose}"
    )
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        required=True,
        help=f"a module defining {defines} (repeat for several), e.g. myapp.models",
    )


def _add_paging_arguments(parser: argparse.ArgumentParser, batch: str) -> None:
    """``--after`` (a resume cursor) and ``--batch-size`` (``batch``, 500 by default): the
    options of a command that walks a class page by page."""
    parser.add_argument("--after", help="resume after this cursor (printed by an earlier run)")
    parser.add_argument("--batch-size", type=int, default=500, help=f"{batch} (default: 500)")


def _version() -> str:
    from pydantic_toast import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    url: str | None = args.url or os.environ.get("DATABASE_URL")
    if not url:
        parser.error("give a storage URL or set DATABASE_URL")
    try:
        if args.command == "partition":
            return _partition(url, args.partitions)
        if args.command == "purge":
            return _purge(url, args.batch_size)
        if args.command == "orphans":
            return _orphans(url, args)
        if args.command == "reencrypt":
            return _reencrypt(url, args)
        return _run(args.command, url, getattr(args, "revision", None))
    except CommandError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"pydantic-toast {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        message = _masked(f"{type(exc).__name__}: {exc}".splitlines()[0], url)
        if args.command in _CHANGES_TABLES and sqlstate(exc) == "42501":
            message = (
                f"the URL's user may not create or change the library's tables ({message}): "
                f"run `pydantic-toast {args.command}` as the database owner, or grant the user "
                "CREATE on the schema (and ownership of tables it already holds)"
            )
        elif args.command in ("check", "current") and sqlstate(exc) == "42501":
            message = (
                f"the URL's user may not read the migrations' version table ({message}): "
                "GRANT SELECT ON pydantic_toast_alembic_version TO the user, or run "
                f"`pydantic-toast {args.command}` as the tables' owner"
            )
        elif args.command in _CHANGES_TABLES and sqlstate(exc) in ("57014", "55P03"):
            setting, example = (
                ("lock_timeout", "'1min'")
                if sqlstate(exc) == "55P03"
                else ("statement_timeout", "'1h'")
            )
            message = (
                f"the server ended a statement ({message}); the command runs in one "
                "transaction, so nothing was changed: run it again when no long transaction "
                "(a report, a pg_dump) holds the table, or with a longer "
                f"{setting} for the URL's user (ALTER ROLE ... SET {setting} = {example})"
            )
        hint = "" if args.verbose else " (run again with --verbose for the traceback)"
        print(f"pydantic-toast {args.command}: error: {message}{hint}", file=sys.stderr)
        return EXIT_STORAGE


# The commands whose statements create, alter or drop tables (insufficient privilege there
# asks for CREATE or ownership, not for the grants that saving and loading need).
_CHANGES_TABLES = ("migrate", "downgrade", "partition", "recount")


def _run(command: str, url: str, revision: str | None) -> int:
    parsed = _check_url(url)
    masked = parsed.masked
    if command == "check":
        status = _status(url)
        at_head = status.current == status.head
        print(f"{masked}: reachable")
        if not status.known:
            print(f"  {status.unknown_revision(parsed)}")
            return EXIT_NOT_AT_HEAD
        if at_head and not status.usable:
            verdict = (
                "but the library's tables do not match it (dropped or altered by hand?): "
                "restore them from a backup"
            )
        elif at_head and status.count_faults:
            verdict = "migrated, but count() is off"
        else:
            verdict = "migrated" if at_head else "NOT migrated: run pydantic-toast migrate"
        print(f"  revision: {status.current or 'none'} (head: {status.head}) - {verdict}")
        for fault in status.count_faults if status.usable else ():
            print(f"  {fault}")
        healthy = at_head and status.usable and not status.count_faults
        return EXIT_OK if healthy else EXIT_NOT_AT_HEAD
    if command == "recount":
        from pydantic_toast.integrations.counts import recount

        status = _status(url)
        if status.current != status.head:
            raise CommandError(
                f"{masked} is not migrated to head: run pydantic-toast migrate first",
                EXIT_NOT_AT_HEAD,
            )
        classes = asyncio.run(recount(url))
        print(f"{masked}: counted the records of {classes} classes again")
        return EXIT_OK
    if command in ("migrate", "downgrade"):
        status = _status(url, create=command == "migrate")
        if not status.known:  # Alembic would say only "Can't locate revision ..."
            raise CommandError(status.unknown_revision(parsed), EXIT_STORAGE)
    from alembic import command as alembic_command

    config = alembic_config(url)
    if command == "migrate":
        alembic_command.upgrade(config, revision or "head")
        print(f"{masked}: migrated to {revision}")
    elif command == "downgrade":
        alembic_command.downgrade(config, revision or "base")
        print(f"{masked}: downgraded to {revision}")
    else:
        print(_status(url).current or "none")
    return EXIT_OK


def _partition(url: str, partitions: int) -> int:
    parsed = _known_url(url)
    if not parsed.scheme.startswith("postgres"):
        raise CommandError(
            f"partition works on PostgreSQL only, not {parsed.scheme}://", EXIT_USAGE
        )
    status = _status(url)
    if status.current != status.head:
        raise CommandError(
            f"{parsed.masked} is not migrated to head: run pydantic-toast migrate first",
            EXIT_NOT_AT_HEAD,
        )
    from pydantic_toast.integrations.partition import partition_table

    rows = asyncio.run(partition_table(url, partitions))
    print(
        f"{parsed.masked}: external_records hash-partitioned by id into {partitions} ({rows} rows)"
    )
    return EXIT_OK


def _purge(url: str, batch_size: int) -> int:
    parsed = _purgeable_url(url)
    if not 1 <= batch_size <= 10_000:
        raise CommandError(f"--batch-size must be from 1 to 10000, got {batch_size}", EXIT_USAGE)
    from pydantic_toast._expiry import apurge_expired

    # The running total, on a terminal only, erased at the end: the result is printed once,
    # on stdout (a log or a pipe would get every total, then the same total again).
    shown = sys.stderr.isatty()
    line = ""

    def progress(total: int) -> None:
        nonlocal line
        line = f"purged {total} expired records"
        print(f"\r{line}", end="", file=sys.stderr, flush=True)

    async def purge(storage: Storage) -> int:
        try:
            return await apurge_expired(
                url, batch_size=batch_size, progress=progress if shown else None
            )
        finally:
            await storage.aclose()

    try:
        with Storage() as storage:  # current in the loop's task: the command's own connections
            total = asyncio.run(purge(storage))
    finally:
        if line:
            print(f"\r{' ' * len(line)}\r", end="", file=sys.stderr, flush=True)
    print(f"{parsed.masked}: purged {total} expired records")
    return EXIT_OK


def _orphans(url: str, args: argparse.Namespace) -> int:
    from pydantic_toast._exceptions import UnreadReferrersError
    from pydantic_toast._orphans import (
        OrphanReport,
        afind_orphaned_payloads,
        afind_orphans,
    )

    parsed = _upkeep_url(url, args)
    if args.payloads and (args.read_unimported or args.no_referencing_classes):
        raise CommandError(
            "--read-unimported and --no-referencing-classes do not apply to --payloads",
            EXIT_USAGE,
        )
    if args.after is not None and args.payloads:
        raise CommandError("--after does not apply to --payloads (a payload scan)", EXIT_USAGE)
    if args.min_age < 0:
        raise CommandError(f"--min-age must be 0 or more, got {args.min_age}", EXIT_USAGE)
    with Storage() as storage:
        model = _imported_model(storage, parsed, args)

        def progress(report: OrphanReport) -> None:
            _print_progress(
                f"checked {report.checked}, orphans {len(report.orphans)}, "
                f"deleted {report.deleted}",
                report.next_after,
            )

        async def scan() -> OrphanReport:
            try:
                if args.payloads:
                    return await afind_orphaned_payloads(
                        model,
                        delete=args.delete,
                        batch_size=args.batch_size,
                        min_age=timedelta(seconds=args.min_age),
                        progress=progress,
                    )
                return await afind_orphans(
                    model,
                    referencing=[] if args.no_referencing_classes else None,
                    delete=args.delete,
                    batch_size=args.batch_size,
                    after=args.after,
                    progress=progress,
                    read_unimported=args.read_unimported,
                )
            finally:
                await storage.aclose()

        try:
            report = asyncio.run(scan())
        except UnreadReferrersError as exc:
            raise CommandError(_refused_deletion(parsed, args, exc), EXIT_USAGE) from exc
    for id in report.orphans:
        print(id)
    verb = "deleted" if args.delete else "found"
    sources = ", ".join(report.referencing + report.read_as_json) or "none"
    print(
        f"{parsed.masked}: {report.class_name}: {len(report.orphans)} orphans {verb} among "
        f"{report.checked} records (referencing classes: {sources})",
        file=sys.stderr,
    )
    if report.unread is None or report.unread:
        unread = "unknown classes" if report.unread is None else ", ".join(report.unread)
        print(
            f"warning: records not read may reference these orphans ({unread}: their models "
            "are not imported); pass their modules with --module before any --delete",
            file=sys.stderr,
        )
    return EXIT_OK


def _refused_deletion(url: StorageURL, args: argparse.Namespace, exc: Any) -> str:
    """The message of an orphan deletion refused (``exc``, an ``UnreadReferrersError``):
    what may reference the orphans, and the options that fix it."""
    unread: list[str] | None = exc.unread
    if unread is None:
        return (
            f"refusing --delete: {url.masked} cannot list the class names it holds, so records "
            f"of classes no --module defines may reference {args.class_name}'s orphans; "
            "nothing was deleted (run without --delete to report them)"
        )
    if not unread:
        return (
            f"refusing --delete: no imported model can reference {args.class_name}, so every "
            "record of it would be deleted; nothing was deleted. Pass --module for the modules "
            "defining the models that reference it, or --no-referencing-classes if none does"
        )
    shown = ", ".join(unread[:10]) + (f" and {len(unread) - 10} more" if len(unread) > 10 else "")
    return (
        f"refusing --delete: {url.masked} holds records of classes whose models are not "
        f"imported ({shown}), and they may reference {args.class_name}'s orphans; nothing was "
        "deleted. Pass --module for the modules defining those models"
        + (
            " (their records are compressed, encrypted or offloaded: not readable as plain JSON)"
            if args.read_unimported
            else ", or --read-unimported to read their records as plain JSON"
        )
    )


def _reencrypt(url: str, args: argparse.Namespace) -> int:
    from pydantic_toast._reencrypt import ReencryptReport, areencrypt

    parsed = _upkeep_url(url, args)
    last: list[ReencryptReport] = []

    def progress(report: ReencryptReport) -> None:
        last[:] = [report]
        _print_progress(
            f"checked {report.checked}, rewritten {report.rewritten}, changed meanwhile "
            f"{report.changed}",
            report.next_after,
        )

    with Storage() as storage:
        model = _imported_model(storage, parsed, args)

        async def rewrite() -> ReencryptReport:
            try:
                return await areencrypt(
                    model, batch_size=args.batch_size, after=args.after, progress=progress
                )
            finally:
                await storage.aclose()

        try:
            report = asyncio.run(rewrite())
        except ExternalStorageError as exc:
            cursor = last[0].next_after if last else args.after
            resume = (
                f"; the pages before were rewritten: resume with --after {cursor}" if cursor else ""
            )
            raise CommandError(_masked(f"{exc}{resume}", url), EXIT_STORAGE) from exc
    how = f"under key {report.key_id!r}" if report.key_id is not None else "unencrypted"
    print(
        f"{parsed.masked}: {report.class_name}: {report.rewritten} of {report.checked} records "
        f"rewritten {how}; {report.changed} changed meanwhile by another writer (skipped)"
    )
    return EXIT_OK


def _upkeep_url(url: str, args: argparse.Namespace) -> StorageURL:
    """The URL of an upkeep command (orphans, reencrypt), its common options checked."""
    from pydantic_toast._records import PageCursor

    try:
        parsed = StorageURL.parse(url)
    except ExternalStorageError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    if not 1 <= args.batch_size <= 1000:
        raise CommandError(
            f"--batch-size must be from 1 to 1000, got {args.batch_size}", EXIT_USAGE
        )
    if args.after is not None and PageCursor.from_token(args.after) is None:
        raise CommandError(
            f"--after {args.after!r} is not a cursor this command printed", EXIT_USAGE
        )
    return parsed


def _imported_model(storage: Storage, url: StorageURL, args: argparse.Namespace) -> Any:
    """The model class stored as ``--class`` on ``url``'s store, once the ``--module``s
    that define the models are imported."""
    import importlib

    _put_cwd_on_path()
    for module in args.module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CommandError(f"cannot import --module {module}: {exc}", EXIT_USAGE) from None
    return _model_named(storage, url, args.class_name)


def _put_cwd_on_path() -> None:
    """Put the current directory first on ``sys.path``, as alembic and uvicorn do: the
    ``pydantic-toast`` script's own directory stands there, so ``--module mymodels`` would not
    find ``./mymodels.py`` (``python -m`` puts the current directory there itself)."""
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


def _model_named(storage: Storage, url: StorageURL, name: str) -> Any:
    """The imported model class stored as ``name`` on ``url``'s store."""
    from pydantic_toast._orphans import live_models

    identity = storage.store_identity(url)
    unresolved = []
    elsewhere = []
    for cls in live_models():
        settings = cls._toast_settings()
        if settings.external_name != name:
            continue
        try:
            where = settings.url()
        except ExternalStorageError:  # its env: variable is not set in this process
            unresolved.append(f"{cls.__qualname__} ({settings.storage})")
            continue
        if storage.store_identity(where) == identity:
            return cls
        elsewhere.append(f"{cls.__module__}.{cls.__qualname__} in {where.masked}")
    if elsewhere and not unresolved:
        raise CommandError(
            f"no imported model is stored as {name!r} in {url.masked}; the one imported is "
            f"stored elsewhere: {', '.join(elsewhere)}. Pass the URL of its storage, or the "
            "module of the model stored in this one",
            EXIT_USAGE,
        )
    if unresolved:
        raise CommandError(
            f"the model stored as {name!r} names its storage by an environment variable that "
            f"is not set here: {', '.join(unresolved)}; set it to {url.masked}",
            EXIT_USAGE,
        )
    raise CommandError(
        f"no imported model is stored as {name!r} in {url.masked}: pass the module that defines "
        "it with --module (and its stored name, external_name, with --class)",
        EXIT_USAGE,
    )


def _check_url(url: str) -> StorageURL:
    """``url`` parsed, for the migration commands: a known scheme with a table to migrate."""
    parsed = _known_url(url)
    if parsed.scheme not in _SQL_SCHEMES:
        raise CommandError(
            f"{parsed.masked}: {parsed.scheme}:// needs no migration (only PostgreSQL and SQLite "
            "have a table)",
            EXIT_USAGE,
        )
    return parsed


def _purgeable_url(url: str) -> StorageURL:
    """``url`` parsed, for ``purge``: a store that keeps expired records until purged."""
    parsed = _known_url(url)
    scheme = parsed.scheme
    if scheme in _SQL_SCHEMES:
        return parsed
    if scheme.startswith("redis") or scheme == "memory":
        why = "deletes each expired record itself, at its ttl"
    else:
        # An installed backend (an entry point) that keeps expired records until purged.
        try:
            backend_class = backend_class_for(scheme)
        except ExternalStorageError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from exc
        if backend_class.purge_expired is not StorageBackend.purge_expired:
            return parsed
        why = (
            "deletes each expired record itself (its backend has no purge_expired)"
            if Capability.TTL in backend_class.capabilities
            else "stores no records with a ttl"
        )
    raise CommandError(
        f"{parsed.masked}: {scheme}:// {why}: nothing to purge (PostgreSQL, SQLite and backends "
        "that implement purge_expired keep expired records until purged)",
        EXIT_USAGE,
    )


def _known_url(url: str) -> StorageURL:
    """``url`` parsed, its scheme known and its driver installed."""
    try:
        parsed = StorageURL.parse(url)
    except ExternalStorageError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    scheme = parsed.scheme
    if scheme not in known_schemes():
        close = difflib.get_close_matches(scheme, known_schemes(), n=1)
        hint = f": did you mean {close[0]}?" if close else ""
        if (driver := sqlalchemy_driver_hint(scheme)) is not None:
            hint = f": {driver}"
        raise CommandError(
            f"unknown scheme {scheme!r} in {parsed.masked}{hint} "
            f"(known: {', '.join(s for s in _SQL_SCHEMES)})",
            EXIT_USAGE,
        )
    missing = missing_extra(scheme)
    if missing is not None:
        module, extra = missing
        raise CommandError(
            f"{scheme}:// needs {module}, which is not installed: "
            f"run pip install 'pydantic-toast[{extra}]'",
            EXIT_USAGE,
        )
    return parsed


def _reachable(url: str, *, create: bool = False) -> bool:
    """Connect with the library's backend; return whether the table exists.

    Args:
        url: The database URL.
        create: Whether a SQLite file that does not exist may be created (``migrate`` only:
            connecting creates it, so ``check`` would report a typo as reachable).

    Raises:
        CommandError: The database cannot be reached (the backend's message says why), or
            the SQLite file does not exist and ``create`` is false.
    """
    parsed = StorageURL.parse(url)
    if parsed.scheme.startswith("sqlite"):
        # Checked here: aiosqlite's failed connect leaves its thread calling a closed loop.
        file = Path(parsed.path[1:] if parsed.path.startswith("/") else parsed.path)
        if not file.parent.is_dir():
            raise CommandError(
                f"{parsed.masked}: the folder {file.parent} does not exist: create it first",
                EXIT_STORAGE,
            )
        if not create and not file.exists():
            raise CommandError(
                f"{parsed.masked}: the SQLite file {file} does not exist: check the path "
                f"(pydantic-toast migrate {parsed.masked} creates it)",
                EXIT_STORAGE,
            )

    async def probe() -> bool:
        storage = Storage()  # connects through the library's boundary: its errors, its messages
        try:
            await storage.connected(parsed)
        except StorageSchemaError:
            return False
        except ExternalStorageError as exc:
            raise CommandError(str(exc), EXIT_STORAGE) from None
        finally:
            await storage.aclose()
        return True

    return asyncio.run(probe())


def _status(url: str, *, create: bool = False) -> Status:
    """The applied and head revisions at ``url`` (``create``: see :func:`_reachable`)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from pydantic_toast.integrations.alembic import VERSION_TABLE, migration_engine

    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    assert head is not None  # the package ships at least one revision
    # Raises when the database cannot be reached. A table missing or older than this version
    # expects (the library's check fails) still has its revision: read it.
    usable = _reachable(url, create=create)

    async def read() -> tuple[str | None, list[str]]:
        from pydantic_toast.integrations.counts import count_trigger_faults

        engine = migration_engine(url)
        try:
            async with engine.connect() as connection:
                current = await connection.run_sync(
                    lambda sync: MigrationContext.configure(
                        sync, opts={"version_table": VERSION_TABLE}
                    ).get_current_revision()
                )
                at_head = current == head and usable
                return current, await count_trigger_faults(connection) if at_head else []
        finally:
            await engine.dispose()

    current, faults = asyncio.run(read())
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    return Status(
        current=current, head=head, known=known, usable=usable, count_faults=tuple(faults)
    )


def _masked(text: str, url: str) -> str:
    try:
        parsed = StorageURL.parse(url)
    except ExternalStorageError:
        return text.replace(url, mask_url(url))
    text = text.replace(url, parsed.masked)
    if parsed.password:
        text = text.replace(parsed.password, "***")
    return text


if __name__ == "__main__":
    sys.exit(main())
