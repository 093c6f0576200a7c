#!/bin/bash
# full matrix; reps interleaved so that background noise spreads over engines
B=$HOME/.cache/logbench-target/release/logbench
OUT=${OUT:-/tmp/logbench/results.txt}
REPS=${REPS:-3}
for rep in $(seq 1 $REPS); do
  for N in 64 512 4096; do
    case $N in 64) M=200000;; *) M=1000000;; esac
    for e in raw1 raw seglog fjall fjall-kv redb; do
      echo "rep=$rep load=\"$(cut -d' ' -f1-3 /proc/loadavg)\" $($B $e $N $M /tmp/logbench/data/$e)" >> $OUT
    done
  done
done
