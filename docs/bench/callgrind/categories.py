#!/usr/bin/env python3
"""categories.py FILE OPS: a callgrind profile's instructions per operation, by kind.

Each function's own instructions (callgrind_annotate --inclusive=no) go to the first kind
whose pattern its name or its source file's path matches (not the binary it is in: every
function linked into `outrider` would otherwise count as ours); OPS is the number of requests,
connections or megabytes the profile covers. See profile.md, "Instruction counts".
"""
import collections
import re
import subprocess
import sys

KINDS = [
    ("AES-GCM (ring)", r"ring_core|aesni|_gcm|ghash|ring::aead"),
    ("memcpy/memmove/memset", r"memcpy|memmove|memset"),
    ("allocator", r"malloc|_int_free|\bfree\b|realloc|tcache|unlink_chunk|sdallocx|_rjem_"),
    ("tokio-rustls", r"tokio_rustls"),
    ("rustls", r"rustls"),
    ("h2", r"\bh2::|/h2/"),
    ("tokio, mio", r"tokio|\bmio\b"),
    ("tracing", r"tracing"),
    ("metrics", r"prometheus|telemetry::metrics"),
    ("HTTP/1 (httparse, the lean path)", r"httparse|proxy::http"),
    ("bytes", r"bytes::"),
    ("the proxy's own code", r"outrider::|ztunnel::"),
    ("libc's system-call wrappers", r"libc|syscall|__GI|sendto|recv|writev|epoll|pthread|futex|clock_gettime"),
]


def main():
    path, ops = sys.argv[1], float(sys.argv[2])
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    kinds, total = collections.Counter(), 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        n, name = int(m.group(1).replace(",", "")), re.sub(r" \[[^\]]*\]$", "", m.group(2))
        kind = next((k for k, rx in KINDS if re.search(rx, name)), "other")
        kinds[kind] += n
        total += n
    print(f"{path}: {total / ops:,.0f} instructions per operation ({ops:g} operations)")
    for kind, n in kinds.most_common():
        print(f"  {n / ops:>12,.0f}  {100 * n / total:5.1f} %  {kind}")


if __name__ == "__main__":
    main()
