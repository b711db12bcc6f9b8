#!/usr/bin/env python3
"""Telemetry conformance: the same traffic through ztunnel and through Outrider, on the
same two pods, and their `istio_tcp_*` metrics side by side.

Reuses the peer harness as it is (`peer_bench.py`: its pods, its ztunnel path, and the
Outrider plugin `outrider_path.py`); only the traffic is ours, because the harness's own
tests do no uploads or downloads:

  1. a 1 MB upload (plain TCP: the client writes 1,000,000 bytes and half-closes, the
     server reads to the end),
  2. a 1 MB download (the server writes 1,000,000 bytes and closes),
  3. 10 HTTP GETs of nginx's 1 KiB file, one connection each (`Connection: close`).

The client is a raw-socket Python script in the client pod that reports what its socket
carried each way (HTTP heads included), so every counter can be checked against the app's
own wire bytes. Each dataplane is started fresh, so its counters hold this traffic only.

  sudo OUTRIDER_BIN=$PWD/target/release/outrider python3 tools/telemetry_conformance.py \\
      --ztunnel /path/to/ztunnel [--bench-dir ../shared/bench] [--out docs/telemetry-conformance.json]

Prints a markdown report (names, label keys, byte values per reporter) and writes JSON.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

CLIENT_SCRIPT = r"""
import json, socket, sys
server, up_port, down_port, http_port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def drain(s):
    got = 0
    while True:
        b = s.recv(65536)
        if not b:
            return got
        got += len(b)
out = {}
s = socket.create_connection((server, up_port), timeout=20)
s.sendall(b"u" * n)
s.shutdown(socket.SHUT_WR)
out["upload"] = [n, drain(s)]
s.close()
s = socket.create_connection((server, down_port), timeout=20)
s.shutdown(socket.SHUT_WR)
out["download"] = [0, drain(s)]
s.close()
sent = got = 0
for _ in range(10):
    s = socket.create_connection((server, http_port), timeout=20)
    req = ("GET /1k.bin HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: conformance\r\nConnection: close\r\n\r\n" % (server, http_port)).encode()
    s.sendall(req)
    sent += len(req)
    got += drain(s)
    s.close()
out["http"] = [sent, got]
print(json.dumps(out))
"""

# The server side of the upload (read to the end, then close) and of the download (write
# n bytes, then close).
SERVER_SCRIPT = r"""
import socket, sys, threading
up_port, down_port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s
def sink(s):
    while True:
        c, _ = s.accept()
        while c.recv(65536):
            pass
        c.close()
def source(s):
    while True:
        c, _ = s.accept()
        c.sendall(b"d" * n)
        c.close()
a, b = listener(up_port), listener(down_port)
threading.Thread(target=sink, args=(a,), daemon=True).start()
source(b)
"""

UP_PORT, DOWN_PORT, SIZE = 9000, 9001, 1_000_000
TCP_METRICS = ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
               "istio_tcp_received_bytes_total", "istio_tcp_sent_bytes_total")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bench-dir", default=os.path.join(here, "..", "..", "shared", "bench"),
                    help="the peer harness (peer_bench.py, outrider_path.py)")
    ap.add_argument("--ztunnel", help="ztunnel built with --features testing (without it: Outrider only)")
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--keep-scratch", action="store_true", help="keep the logs and configs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("must run as root (network namespaces)")
    if not os.environ.get("OUTRIDER_BIN"):
        sys.exit("set OUTRIDER_BIN to the outrider binary (release build)")
    bench = os.path.abspath(args.bench_dir)
    sys.path.insert(0, bench)
    import peer_bench as pb  # noqa: E402 - the harness, used as it is

    pb.ensure_packages(False)  # sockperf, nginx, … as the harness installs them
    scratch = tempfile.mkdtemp(prefix="telemetry-conformance-")
    os.chmod(scratch, 0o755)
    tag = str(os.getpid())
    topo = pb.Topology(scratch, tag, cpu_layout="none")
    wl = pb.Workloads(topo, scratch)
    paths = {}
    if args.ztunnel:
        paths["ztunnel"] = pb.ZtunnelPath(topo, wl, scratch, os.path.abspath(args.ztunnel), "hbone", {}, "info")
    paths["outrider"] = pb.ScriptPath(topo, wl, scratch, "outrider-mtls", os.path.join(bench, "outrider_path.py"))
    results = {}
    try:
        topo.up()
        wl.start()
        wl.procs["conformance"] = topo.ns_popen(
            topo.server, ["python3", "-c", SERVER_SCRIPT, str(UP_PORT), str(DOWN_PORT), str(SIZE)],
            os.path.join(scratch, "conformance-server.log"))
        wl.wait_listening([UP_PORT, DOWN_PORT])
        for name, path in paths.items():
            pb.log(f"{name}: up")
            path.up()
            time.sleep(1)
            out = topo.ns_run(topo.client, ["python3", "-c", CLIENT_SCRIPT, pb.SERVER_IP, str(UP_PORT),
                                            str(DOWN_PORT), str(pb.PORT_HTTP), str(SIZE)], timeout=120)
            wire = json.loads(out.stdout)
            time.sleep(1)  # the server side's last close
            results[name] = {"wire": wire, "scrape": scrape(pb, topo, name, path)}
            pb.log(f"{name}: down")
            path.down()
    finally:
        for path in paths.values():
            try:
                path.down()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                pb.warn(f"down: {e}")
        topo.stop_all_procs()
        topo.destroy()
        if args.keep_scratch:
            pb.log(f"kept scratch {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    report = compare(results)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({k: {"wire": v["wire"], "series": v["scrape"]} for k, v in results.items()}, f, indent=1)


def scrape(pb, topo, name, path):
    """The istio_tcp_* series of both sides: {reporter side: [(name, labels, value)]}."""
    texts = {}
    if name == "ztunnel":
        for side, ns in (("client", topo.client), ("server", topo.server)):
            st, body = topo.http_get(ns, "127.0.0.1", pb.ZT_METRICS, "/metrics", timeout=3)
            texts[side] = body.decode()
    else:
        import urllib.request
        for side, port in (("client", 15120), ("server", 15121)):
            texts[side] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {side: [s for s in pb.parse_prom(t) if s[0] in TCP_METRICS] for side, t in texts.items()}


def compare(results):
    lines = ["# istio_tcp_* from ztunnel and Outrider, same pods, same traffic", ""]
    wire = {k: v["wire"] for k, v in results.items()}
    lines.append("App socket bytes (client pod's view, client → server / server → client):")
    for name, w in wire.items():
        total = [sum(v[i] for v in w.values()) for i in (0, 1)]
        lines.append(f"- {name}: {json.dumps(w)}; total {total[0]} / {total[1]}")
    lines += ["", "| metric | reporter | " + " | ".join(results) + " |",
              "|---|---|" + "---|" * len(results)]
    for metric in TCP_METRICS:
        for side, reporter in (("client", "source"), ("server", "destination")):
            row = []
            for name in results:
                vals = [v for n, lab, v in results[name]["scrape"].get(side, [])
                        if n == metric and lab.get("reporter") == reporter]
                row.append(f"{sum(vals):.0f} ({len(vals)} series)" if vals else "absent")
            lines.append(f"| {metric} | {reporter} | " + " | ".join(row) + " |")
    lines += ["", "Label keys of istio_tcp_* series:"]
    keys = {}
    for name, r in results.items():
        keys[name] = sorted({k for side in r["scrape"].values() for _, lab, _ in side for k in lab})
        lines.append(f"- {name}: {', '.join(keys[name])}")
    if len(keys) == 2:
        a, b = list(keys)
        lines.append(f"- only {a}: {', '.join(sorted(set(keys[a]) - set(keys[b]))) or '-'}")
        lines.append(f"- only {b}: {', '.join(sorted(set(keys[b]) - set(keys[a]))) or '-'}")
    lines += ["", "Label values (source reporter, first series):"]
    for name, r in results.items():
        first = next((lab for n, lab, _ in r["scrape"].get("client", [])
                      if n == "istio_tcp_received_bytes_total" and lab.get("reporter") == "source"), {})
        lines.append(f"- {name}: {json.dumps(first, sort_keys=True)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
