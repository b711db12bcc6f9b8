#!/bin/bash
# usage: ss-loop.sh OUT PATTERN N -- for each of N runs of PATTERN: ss -tin of every netns 3 s in and 4 s later
out=$1; pat=$2; n=$3
snap() { for ns in $(ip netns list | awk '{print $1}'); do echo "### $ns"; ip netns exec $ns ss -tinp; done; echo "### host"; ss -tinp; }
for k in $(seq 1 $n); do
  for i in $(seq 1 4800); do g=$(pgrep -f "$pat" | head -1); [ -n "$g" ] && break; sleep 0.25; done
  sleep 3; snap > $out.$k.0; sleep 4; snap > $out.$k.1
  while pgrep -f "$pat" >/dev/null; do sleep 0.25; done
done
