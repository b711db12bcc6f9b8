#!/bin/bash
# usage: snmp-loop.sh OUT PATTERN N -- for each of N runs of PATTERN: snapshot counters 3 s in and 4 s later
out=$1; pat=$2; n=$3
snap() { for ns in host $(ip netns list | awk '{print $1}'); do
  if [ $ns = host ]; then c=""; else c="ip netns exec $ns"; fi
  $c awk -v ns=$ns '/^Tcp:/{if(h){for(i=2;i<=NF;i++)print ns, "Tcp."hn[i], $i}else{h=1;for(i=2;i<=NF;i++)hn[i]=$i}}' /proc/net/snmp
  $c awk -v ns=$ns '/^TcpExt:/{if(h){for(i=2;i<=NF;i++)print ns, "X."hn[i], $i}else{h=1;for(i=2;i<=NF;i++)hn[i]=$i}}' /proc/net/netstat
  done; }
for k in $(seq 1 $n); do
  for i in $(seq 1 4800); do g=$(pgrep -f "$pat" | head -1); [ -n "$g" ] && break; sleep 0.25; done
  sleep 3; snap > $out.$k.0; sleep 4; snap > $out.$k.1
  while pgrep -f "$pat" >/dev/null; do sleep 0.25; done
done
