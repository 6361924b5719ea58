#!/bin/bash
# up.sh DIR CTLD_PORT SLURMD_PORT: a one-node Slurm on loopback under DIR (fresh state), with one
# fake GPU (a GRES on a mknod character device, split into 2 shards). Needs root and slurm-wlm
# (installed by .ci/setup). Returns once a probe job has run: sinfo says "idle" before slurmd
# can take jobs. Prints nothing on success.
set -e
D=${1:?usage: up.sh DIR CTLD_PORT SLURMD_PORT}; P1=${2:?ctld port}; P2=${3:?slurmd port}
here=$(dirname "$(readlink -f "$0")")
command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed (bash .ci/setup installs it)"; exit 1; }
rm -rf "$D"; mkdir -p "$D/state" "$D/spool" "$D/dev" /run/munge; chown munge:munge /run/munge
mknod "$D/dev/nvidia0" c 195 0 2>/dev/null || true
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
slurmctld -i
slurmd
for i in $(seq 300); do
  out=$(srun -t 1 -n1 -c1 --mem=50M hostname 2>/dev/null) && [ -n "$out" ] && exit 0
  sleep 0.2
done
echo "slurm did not come up: $(tail -3 "$D/slurmctld.log")"
exit 1
