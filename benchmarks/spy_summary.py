"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): top functions by self and inclusive samples.

Usage: ``python benchmarks/spy_summary.py FILE [--top K] [--only galaxy_trio]``
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Sequence
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "galaxy_trio/", "benchmarks/"):
        if marker in path:
            path = (marker if marker != "site-packages/" else "") + path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";") if frame and not frame.startswith("process ")]
        frames = [frame for frame in frames if not frame.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return total, own, inclusive


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--only", default="", help="inclusive table: only frames whose text contains this")
    args = parser.parse_args(argv)
    total, own, inclusive = summarise(args.file.read_text(encoding="utf-8", errors="replace"))
    print(f"{args.file}: {total} samples")
    print("self:")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print(f"inclusive{' (' + args.only + ')' if args.only else ''}:")
    shown = [(f, c) for f, c in inclusive.most_common() if args.only in f][: args.top]
    for frame, count in shown:
        print(f"  {100 * count / total:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
