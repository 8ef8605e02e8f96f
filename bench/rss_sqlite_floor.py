"""Peak RSS growth of one INSERT of a 100 MB value through Python's sqlite3 alone (no library).

    MALLOC_MMAP_THRESHOLD_=131072 python bench/rss_sqlite_floor.py

The value exists before the measurement starts; what the INSERT adds is SQLite's own: its copy
of the bound value (``sqlite3_bind_*`` with ``SQLITE_TRANSIENT``, as Python's sqlite3 always
binds), or the zeroblob expanded in its register, and the row it assembles (``OP_MakeRecord``)
before writing it to pages. Whatever the binding, that is 2x the value; a save through
pydantic-toast adds the model's JSON (1x), which the model keeps for change tracking.

Incremental blob I/O (``INSERT`` of ``zeroblob(n)``, then ``Connection.blobopen`` writes) does
not avoid it: ``OP_MakeRecord`` keeps a zeroblob unexpanded only when every column after it
holds no bytes (NULL, ``''``, the integers 0 and 1, or another zeroblob: the last row below,
0x). In ``external_records`` the data column was followed by ``created_at`` and
``updated_at`` (text, never empty), so the zeroblob was expanded (2x, as bound bytes), and the
row stays a BLOB, not the TEXT a bound JSON is stored as. Setting those columns by a later
``UPDATE`` rebuilds the row (reading the value back and assembling it again: 2x once more).
With the data column last, the zeroblob and 1 MiB blob writes cost 0.00-0.02x (the last rows),
unless an ``UPDATE`` returns something (``RETURNING`` materializes the new row: 1x). Migration
``0006_sqlite_data_last`` moved the column last, and the library writes records above 1 MiB so.
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
            (
                "zeroblob(?), only NULL after it",
                "INSERT INTO t VALUES ('x', zeroblob(?), NULL)",
                size,
            ),
        ]:
            before = reset_peak_rss()
            connection.execute(sql, (value,))
            print(f"{label}: peak RSS growth {(peak_rss() - before) / size:.2f}x the value")
            connection.execute("DELETE FROM t")
        connection.execute("INSERT INTO t VALUES ('x', zeroblob(?), NULL)", (size,))
        before = reset_peak_rss()
        connection.execute("UPDATE t SET b = 'y'")  # the column after it, set afterwards
        print(f"UPDATE of the column after it: peak RSS growth {(peak_rss() - before) / size:.2f}x")
        # data as the last column: the zeroblob is not expanded, blob I/O writes it in pieces
        connection.execute("CREATE TABLE last (a TEXT, b TEXT, data JSON)")
        before = reset_peak_rss()
        connection.execute("BEGIN")
        row = connection.execute(
            "INSERT INTO last VALUES ('x', 'y', zeroblob(?)) RETURNING rowid", (size,)
        ).fetchone()[0]
        view = memoryview(data)
        with connection.blobopen("last", "data", row) as blob:
            for start in range(0, size, 1 << 20):
                blob.write(view[start : start + (1 << 20)])
        connection.execute("COMMIT")
        growth = (peak_rss() - before) / size
        print(f"data last, zeroblob(?) then 1 MiB blob writes: peak RSS growth {growth:.2f}x")
        for returning in ("", " RETURNING rowid"):
            before = reset_peak_rss()
            connection.execute(f"UPDATE last SET data = zeroblob(?){returning}", (size,)).fetchall()
            growth = (peak_rss() - before) / size
            print(f"data last, UPDATE to zeroblob(?){returning}: peak RSS growth {growth:.2f}x")
        connection.close()


if __name__ == "__main__":
    main()
