"""Peak RSS growth of one INSERT of a 100 MB value through Python's sqlite3 alone (no library).

    MALLOC_MMAP_THRESHOLD_=131072 python bench/rss_sqlite_floor.py

The value exists before the measurement starts; what the INSERT adds is SQLite's own: its copy
of the bound value (``sqlite3_bind_*`` with ``SQLITE_TRANSIENT``, as Python's sqlite3 always
binds), or the zeroblob expanded in its register, and the row it assembles (``OP_MakeRecord``)
before writing it to pages. Whatever the binding, that is 2x the value; a save through
pydantic-toast adds the model's JSON (1x), which the model keeps for change tracking.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from rss import peak_rss, reset_peak_rss


def main() -> None:
    size = 100_000_000
    data = (b"line 0000001 of a large document; " * (size // 34 + 1))[:size]
    with tempfile.TemporaryDirectory() as directory:
        connection = sqlite3.connect(Path(directory) / "floor.db", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        # data between two columns, as in external_records (a trailing zeroblob is not expanded)
        connection.execute("CREATE TABLE t (a TEXT, data JSON, b TEXT)")
        for label, sql, value in [
            (
                "bytes bound, CAST(? AS TEXT)",
                "INSERT INTO t VALUES ('x', CAST(? AS TEXT), 'y')",
                data,
            ),
            ("str bound (text)", "INSERT INTO t VALUES ('x', ?, 'y')", data.decode()),
            ("zeroblob(?), for blob I/O", "INSERT INTO t VALUES ('x', zeroblob(?), 'y')", size),
        ]:
            before = reset_peak_rss()
            connection.execute(sql, (value,))
            print(f"{label}: peak RSS growth {(peak_rss() - before) / size:.2f}x the value")
            connection.execute("DELETE FROM t")
        connection.close()


if __name__ == "__main__":
    main()
