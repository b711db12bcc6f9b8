#!/bin/bash
# run.sh: the peer harness with each proxy under callgrind; prints user-space instructions
# per request, connection or MB, by kind (categories.py). See profile.md, "Instruction counts".
#
#   OUTRIDER_BIN=target/dist/outrider ZTUNNEL=/path/to/ztunnel \
#     docs/bench/callgrind/run.sh OUT http,conn,tput1 outrider-mtls ztunnel-hbone ...
#   docs/bench/callgrind/run.sh OUT tput1 old-mtls=/tmp/old/outrider new-mtls=target/dist/outrider
#
# PATH arguments: outrider-mtls, outrider-tcp (the binary OUTRIDER_BIN), ztunnel-hbone,
# ztunnel-tcp (ZTUNNEL), or NAME=BINARY for another Outrider build (NAME ends in -mtls or -tcp).
# Every proxy process runs under `valgrind --tool=callgrind --instr-atstart=no`; each timed
# load run (wrk's, ab's, iperf3's client) switches instrumentation on before it starts and
# dumps each proxy's counts when it ends (load-wrapper.sh). The proxies run 15-50 times
# slower than natively, so `ab` gets 2,400 connections (EXTRA="--ab-requests N" to change).
# Counts are user space only: the kernel's work is not in them. Needs root, valgrind, and
# ../shared/bench (or HARNESS=DIR).
set -euo pipefail
out=$1; tests=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
harness=${HARNESS:-$here/../../../../shared/bench}
work=$(mktemp -d /tmp/callgrind-run.XXXXXX)
mkdir -p "$out" "$work/dumps" "$work/bin"
trap 'rm -rf "$work"' EXIT

# callgrind_wrap NAME BINARY: $work/NAME runs BINARY under callgrind
callgrind_wrap() {
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=%s "%s" "$@"\n' \
    "$work/dumps/$1.%p" "$2" > "$work/$1"
  chmod +x "$work/$1"
}
# outrider_path NAME BINARY: $work/path-NAME, the harness's outrider_path.py on that build
outrider_path() {
  callgrind_wrap "outrider-$1" "$2"
  printf '#!/bin/sh\nOUTRIDER_BIN=%s exec python3 %s "$@"\n' \
    "$work/outrider-$1" "$harness/outrider_path.py" > "$work/path-$1"
  chmod +x "$work/path-$1"
}
# the harness checks that ztunnel's process is named as its binary: so is this wrapper
callgrind_wrap callgrind-amd64-linux "${ZTUNNEL:-/nonexistent}"

# the load generators behind load-wrapper.sh
for tool in wrk ab iperf3; do ln -s "$here/load-wrapper.sh" "$work/bin/$tool"; done
export CALLGRIND_WORK=$work REAL_PATH=$PATH PATH="$work/bin:$PATH"

paths=direct; args=()
for p in "$@"; do
  name=${p%%=*}
  paths="$paths,$name"
  case $p in
    *=*) outrider_path "$name" "${p#*=}"; args+=(--path-cmd "$name=$work/path-$name") ;;
    outrider-*) outrider_path "$name" "${OUTRIDER_BIN:-/nonexistent}"
                args+=(--path-cmd "$name=$work/path-$name") ;;
  esac
done
[ -n "${ZTUNNEL:-}" ] && args+=(--ztunnel "$work/callgrind-amd64-linux")
python3 "$harness/peer_bench.py" "${args[@]}" --paths "$paths" --tests "$tests" --rounds 1 \
  --duration "${DURATION:-5}" ${EXTRA:---ab-requests 2400} --out "$out"

# the k-th timed run with proxies present is the k-th sample that is not `direct`
python3 - "$out" "$work/dumps" "$here/categories.py" <<'EOF'
import glob, json, os, subprocess, sys
out, dumps, categories = sys.argv[1:]
run = json.load(open(sorted(glob.glob(os.path.join(out, "*.json")))[-1]))
samples = {f"{s['round']}:{s['test']}:{s['path']}": s for s in run["samples"]}
proxied = [samples[o] for o in run["meta"]["order"] if not o.endswith(":direct")]
os.makedirs(os.path.join(out, "callgrind"), exist_ok=True)
nth = {}  # pid -> dumps of it read so far; a process's n-th dump is its n-th timed run
for line in open(os.path.join(dumps, "index")):
    k, pid, *where = line.split()
    s = proxied[int(k) - 1]
    nth[pid] = nth.get(pid, 0) + 1
    f = glob.glob(os.path.join(dumps, f"*.{pid}.{nth[pid]}"))[0]
    text = subprocess.run([sys.executable, categories, f, str(s["resources"]["ops"])],
                          capture_output=True, text=True, check=True).stdout
    print(f"{s['test']} {s['path']} pid {pid} {' '.join(where)}: " + text.split(": ", 1)[1], end="")
    subprocess.run(["cp", f, os.path.join(out, "callgrind", f"{s['test']}-{s['path']}-{pid}")],
                   check=True)
EOF
