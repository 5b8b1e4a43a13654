"""Self time of a `perf` profile summed by where the code comes from: the Rust crate of
each demangled symbol (its first path segment, `<A as B>::f` counted as A's), librdkafka
by its `rd_` prefix, mimalloc by its `mi_` prefix, the C library (split into allocator,
copies, locks), the kernel and the vDSO by their object.

    perf report -i perf.data --stdio --no-children -g none --sort dso,symbol \
        | python3 load-tests/tools/perf_by_crate.py
"""

import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$")


def origin(dso: str, symbol: str) -> str:
    if dso.startswith("[kernel"):
        return "kernel"
    if dso == "[vdso]":
        return "vdso (clock reads)"
    if dso.startswith("libc"):
        if re.search(r"malloc|free|_int_|unlink_chunk|realloc|calloc|tcache", symbol):
            return "allocator (libc)"
        if "mem" in symbol or "str" in symbol:
            return "libc: memcpy / strings"
        if "pthread" in symbol or "lll_" in symbol or "futex" in symbol:
            return "libc: locks"
        return "libc: other"
    if symbol.startswith(("mi_", "_mi_")):
        return "allocator (mimalloc)"
    if symbol.startswith("rd_"):
        return "librdkafka"
    if symbol.startswith("0x"):
        return f"{dso} (unresolved)"
    path = symbol.lstrip("<&*").replace("dyn ", "").replace("mut ", "")
    first = re.split(r"::|<| |\(", path, maxsplit=1)[0]
    if first in ("core", "alloc", "std"):
        return "std (core, alloc)"
    return first or dso


def main() -> None:
    totals: dict[str, float] = defaultdict(float)
    for line in sys.stdin:
        m = LINE.match(line)
        if m:
            totals[origin(m.group(2), m.group(3))] += float(m.group(1))
    for name, share in sorted(totals.items(), key=lambda kv: -kv[1]):
        if share >= 0.5:
            print(f"{share:7.2f}%  {name}")


if __name__ == "__main__":
    main()
