#!/bin/bash
# up.sh DIR CTLD_PORT SLURMD_PORT: a one-node Slurm on loopback under DIR (fresh state), with one
# fake GPU (a GRES on a mknod character device, split into 2 shards). Needs root and slurm-wlm
# (installed by .ci/setup). Where slurmdbd and mariadb-server are installed, the cluster keeps
# accounting (sacct): a private MariaDB (its own datadir under DIR, loopback on a free port, no
# grant tables: only this machine's users reach it) and slurmdbd (a free port), started first and
# stopped by pid in down.sh; without them, no accounting (sacct says storage is disabled).
# WB_SLURM_ACCOUNTING=0 starts one without accounting even where they are installed.
# Returns once a probe job has run: sinfo says "idle" before slurmd can take jobs. Prints nothing
# on success.
set -e
D=${1:?usage: up.sh DIR CTLD_PORT SLURMD_PORT}; P1=${2:?ctld port}; P2=${3:?slurmd port}
here=$(dirname "$(readlink -f "$0")")
command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed (bash .ci/setup installs it)"; exit 1; }
fail() { echo "$1"; [ -n "$2" ] && [ -f "$2" ] && tail -5 "$2"; bash "$here/down.sh" "$D"; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rm -rf "$D"; mkdir -p "$D/state" "$D/spool" "$D/dev" /run/munge; chown munge:munge /run/munge
mknod "$D/dev/nvidia0" c 195 0 2>/dev/null || true
accounting=no
if [ "${WB_SLURM_ACCOUNTING:-1}" != 0 ] && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null; then
  accounting=yes
fi
sed -e "s|@DIR@|$D|g" -e "s|@CTLD_PORT@|$P1|g" -e "s|@SLURMD_PORT@|$P2|g" "$here/slurm.conf" > "$D/slurm.conf"
sed "s|@DIR@|$D|g" "$here/gres.conf" > "$D/gres.conf"
export SLURM_CONF=$D/slurm.conf
if [ ! -f /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
until munge -n </dev/null | unmunge >/dev/null 2>&1; do sleep 0.05; done
if [ $accounting = yes ]; then
  P3=$(free_port); P4=$(free_port)
  mkdir -p "$D/mysql"
  # A throwaway database: small InnoDB files, no binary log, no fsync, no flush at shutdown.
  mariadbd --no-defaults --datadir="$D/mysql" --socket="$D/mysql.sock" --port="$P4" \
    --bind-address=127.0.0.1 --pid-file="$D/mariadb.pid" --log-error="$D/mariadb.log" \
    --user=root --skip-grant-tables --skip-log-bin --innodb-buffer-pool-size=64M \
    --innodb-log-file-size=16M --innodb-flush-log-at-trx-commit=0 \
    --innodb-flush-method=nosync --innodb-doublewrite=0 --innodb-fast-shutdown=2 \
    </dev/null >/dev/null 2>&1 &
  for i in $(seq 300); do
    mariadb --no-defaults -S "$D/mysql.sock" -u root -e 'SELECT 1' >/dev/null 2>&1 && break
    kill -0 $! 2>/dev/null || fail "mariadbd did not start:" "$D/mariadb.log"
    [ "$i" = 300 ] && fail "mariadbd did not answer within 60 s:" "$D/mariadb.log"
    sleep 0.05
  done
  sed -e "s|@DIR@|$D|g" -e "s|@DBD_PORT@|$P3|g" -e "s|@DB_PORT@|$P4|g" "$here/slurmdbd.conf" > "$D/slurmdbd.conf"
  chmod 600 "$D/slurmdbd.conf"
  cat >> "$D/slurm.conf" <<CONF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$P3
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
CONF
  slurmdbd || fail "slurmdbd did not start:" "$D/slurmdbd.log"
  for i in $(seq 300); do
    sacctmgr -n -P show cluster >/dev/null 2>&1 && break
    [ -s "$D/slurmdbd.pid" ] && ! kill -0 "$(cat "$D/slurmdbd.pid")" 2>/dev/null && fail "slurmdbd stopped:" "$D/slurmdbd.log"
    [ "$i" = 300 ] && fail "slurmdbd did not answer within 60 s:" "$D/slurmdbd.log"
    sleep 0.1
  done
  sacctmgr -i add cluster wb >/dev/null && sacctmgr -i add account wb Cluster=wb >/dev/null \
    && sacctmgr -i add user root Account=wb Cluster=wb >/dev/null \
    || fail "sacctmgr could not register the cluster:" "$D/slurmdbd.log"
else
  cat >> "$D/slurm.conf" <<CONF
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
CONF
fi
slurmctld -i
slurmd
for i in $(seq 300); do
  out=$(srun -t 1 -n1 -c1 --mem=50M hostname 2>/dev/null) && [ -n "$out" ] && exit 0
  sleep 0.2
done
echo "slurm did not come up: $(tail -3 "$D/slurmctld.log")"
exit 1
