"""How much permessage-deflate saves, and costs, per frame: ``python -m bench.deflate_explore``.

Massive-shaped trades and quotes (the fields and value ranges of docs/protocol.md's samples,
random tickers of a few hundred) are framed as the relay frames them, N events per frame,
and compressed three ways:

* ``shared``: fastrelay's way (fastrelay/deflate.py), no context takeover: one compressor,
  ``Z_FULL_FLUSH`` after each frame, so any client can inflate any frame alone;
* ``takeover``: one compressor per audience that keeps its window across frames (what
  ``server_no_context_takeover`` left out would allow), ``Z_SYNC_FLUSH`` after each frame;
* ``fresh``: a new compressor per frame (the naive no-takeover).

It prints the ratio (bytes in / bytes out, the 00 00 ff ff tail removed) and the CPU per
frame, for each level and frame size; docs/performance.md ("Compression") quotes a run.
"""

from __future__ import annotations

import argparse
import random
import time
import zlib
from collections.abc import Callable

import orjson

TAIL = b"\x00\x00\xff\xff"


def events(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    tickers = [f"S{i:04d}" for i in range(300)] + ["AAPL", "MSFT", "TSLA", "NVDA", "AMZN"]
    out = []
    for i in range(count):
        sym = rng.choice(tickers)
        price = round(rng.uniform(10, 500), 2)
        t = 1_764_770_000_000 + 3 * i
        if rng.random() < 0.5:
            event = {
                "ev": "T", "sym": sym, "x": rng.choice([1, 4, 7, 11]), "i": str(rng.randrange(10**6)), "z": 3,
                "p": price, "s": rng.choice([1, 100, 200]), "c": [12, 37], "t": t, "q": rng.randrange(10**7),
            }  # fmt: skip
        else:
            event = {
                "ev": "Q", "sym": sym, "bx": rng.choice([1, 4, 7]), "bp": price, "bs": rng.randrange(1, 20),
                "ax": rng.choice([1, 4, 7]), "ap": round(price + 0.01, 2), "as": rng.randrange(1, 20), "c": 1,
                "t": t, "q": rng.randrange(10**7), "z": 3,
            }  # fmt: skip
        out.append(orjson.dumps(event))
    return out


def frames(source: list[bytes], per_frame: int, count: int) -> list[bytes]:
    return [
        b"[" + b",".join(source[i : i + per_frame]) + b"]" for i in range(0, per_frame * count, per_frame)
    ]


def shared(level: int) -> Callable[[bytes], bytes]:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return lambda data: compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def takeover(level: int) -> Callable[[bytes], bytes]:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return lambda data: compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def fresh(level: int) -> Callable[[bytes], bytes]:
    def compress(data: bytes) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    return compress


def measure(
    make: Callable[[int], Callable[[bytes], bytes]], level: int, batch: list[bytes]
) -> tuple[float, float]:
    """(ratio, microseconds per frame) of compressing ``batch`` in order."""
    compress = make(level)
    size_in = size_out = 0
    started = time.perf_counter()
    for frame in batch:
        out = compress(frame)
        size_in += len(frame)
        size_out += len(out) - (4 if out.endswith(TAIL) else 0)
    elapsed = time.perf_counter() - started
    return size_in / size_out, elapsed / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--levels", default="1,6")
    parser.add_argument("--sizes", default="1,2,5,10,20,50", help="events per frame")
    args = parser.parse_args()
    source = events(50 * args.frames)
    print(f"{'events/frame':>12} {'bytes':>6} {'level':>5}  {'shared':>16}  {'takeover':>16}  {'fresh':>16}")
    for per_frame in (int(n) for n in args.sizes.split(",")):
        batch = frames(source, per_frame, args.frames)
        mean = sum(map(len, batch)) / len(batch)
        for level in (int(n) for n in args.levels.split(",")):
            cells = []
            for make in (shared, takeover, fresh):
                ratio, us = measure(make, level, batch)
                cells.append(f"{ratio:5.2f}x {us:6.1f} us")
            print(f"{per_frame:>12} {mean:>6.0f} {level:>5}  " + "  ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
