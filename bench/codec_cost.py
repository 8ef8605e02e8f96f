"""What the codec chain costs on its own: zstd, AES-GCM and both, encode and decode.

The document of bench/compression.py (order lines: repeated keys, similar values) as the
record's JSON, run through ``encode_record`` and ``decode_record`` (SHA-256 check included) for
each chain, interleaved round robin (the order rotating per round), after a warm-up round.
Times are the process's CPU time (``time.process_time``), so waiting for the CPU on a busy
machine does not count.
Reported: throughput in MB of JSON per second, median [min-max], and the stored bytes (the
envelope, base64 included) against the JSON::

    .venv/bin/python bench/codec_cost.py --rounds 7 --size 1 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pydantic_core
from compression import lines

from pydantic_toast import EncryptionKeys, StoredRecord
from pydantic_toast._codecs import CodecSettings, decode_record, encode_record

KEYS = EncryptionKeys({"k1": os.urandom(32)}, current="k1")
CHAINS = {
    "zstd": CodecSettings(compression="zstd", max_decompressed_size=1 << 30),
    "aes-gcm": CodecSettings(encryption=KEYS, max_decompressed_size=1 << 30),
    "zstd+aes-gcm": CodecSettings(
        compression="zstd", encryption=KEYS, max_decompressed_size=1 << 30
    ),
}


def main(rounds: int, sizes: list[float]) -> None:
    now = datetime.now(UTC)
    records = {
        size: StoredRecord(
            "Order", uuid4(), pydantic_core.to_json({"lines": lines(size)}), 1, now, now
        )
        for size in sizes
    }
    cells = [(size, chain) for size in sizes for chain in CHAINS]
    encode: dict[tuple[float, str], list[float]] = {cell: [] for cell in cells}
    decode: dict[tuple[float, str], list[float]] = {cell: [] for cell in cells}
    stored: dict[tuple[float, str], int] = {}
    for round_ in range(rounds + 1):  # round 0 warms up
        shift = round_ % len(cells)
        for size, chain in cells[shift:] + cells[:shift]:
            record, settings = records[size], CHAINS[chain]
            start = time.process_time()
            encoded = encode_record(record, settings)
            encoded_in = time.process_time() - start
            start = time.process_time()
            decoded = decode_record(encoded, settings)
            decoded_in = time.process_time() - start
            assert decoded.data == record.data
            stored[(size, chain)] = len(encoded.data)
            if round_:
                encode[(size, chain)].append(len(record.data) / encoded_in / 1e6)
                decode[(size, chain)].append(len(record.data) / decoded_in / 1e6)
    load = os.getloadavg()
    print(f"{rounds} rounds, interleaved; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| JSON | chain | stored bytes (ratio) | encode MB/s | decode MB/s |")
    print("|---|---|---|---|---|")
    for size, chain in cells:
        json_bytes = len(records[size].data)
        print(
            f"| {json_bytes:,} | {chain} | {stored[(size, chain)]:,} "
            f"({json_bytes / stored[(size, chain)]:.1f}×) | {_cell(encode[(size, chain)])} "
            f"| {_cell(decode[(size, chain)])} |"
        )


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=float, nargs="+", default=[1.0, 10.0])
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.size)
