#!/bin/bash
# load-wrapper.sh: stands in for wrk, ab or iperf3 (run.sh links it under their names, first
# on PATH). A timed run (wrk's with --latency, ab, iperf3's client) switches callgrind's
# instrumentation on in every proxy run.sh started before the tool starts, and dumps their
# counts when it ends, so that the counts cover exactly that run. Anything else passes through.
# Needs CALLGRIND_WORK (run.sh's scratch directory) and REAL_PATH (PATH without this wrapper).
tool=$(basename "$0")
real=$(PATH=$REAL_PATH command -v "$tool")
case "$tool $*" in
  "wrk "*--latency*|"ab "*-n*|"iperf3 "*-c*) ;;
  *) exec "$real" "$@" ;;
esac
procs=$(pgrep -f "callgrind-out-file=$CALLGRIND_WORK/") || exec "$real" "$@"
for p in $procs; do callgrind_control -i on "$p" >/dev/null 2>&1; done
"$real" "$@"
rc=$?
k=$(( $(cat "$CALLGRIND_WORK/dumps/runs" 2>/dev/null || echo 0) + 1 ))
echo "$k" > "$CALLGRIND_WORK/dumps/runs"
for p in $procs; do
  callgrind_control -d "$p" >/dev/null 2>&1
  callgrind_control -i off "$p" >/dev/null 2>&1
  echo "$k $p $(grep -ao 'agent-[ab]' "/proc/$p/cmdline" | head -1) $(ip netns identify "$p")" \
    >> "$CALLGRIND_WORK/dumps/index"
done
exit $rc
