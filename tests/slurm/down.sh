#!/bin/bash
# down.sh DIR: stop the slurmd and slurmctld that up.sh DIR started, by their pid files, and wait
# until they are gone (munged is shared and left running).
D=${1:?usage: down.sh DIR}
for f in "$D/slurmd.pid" "$D/slurmctld.pid"; do
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || continue
  for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
exit 0
