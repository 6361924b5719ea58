#!/bin/bash
# down.sh DIR: stop what up.sh DIR started, by their pid files: slurmd, then slurmctld, then
# slurmdbd and its MariaDB together (where the cluster keeps accounting), waiting until each is
# gone, SIGKILL after 10 s (munged is shared and left running).
D=${1:?usage: down.sh DIR}
stop() {
  local pids=() pid f
  for f in "$@"; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    for i in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  done
}
stop "$D/slurmd.pid"
stop "$D/slurmctld.pid"
stop "$D/slurmdbd.pid" "$D/mariadb.pid"
exit 0
