#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian's slurmctld, slurmd, slurm-client and munge), for the
# cluster test (tests/workflow/test_slurm.py) and for trying the SLURM profile without a cluster. Needs root; no accounting
# database, as on many small clusters. Idempotent: a running cluster is left as it is.
#   bash workflow/scripts/slurm_cluster.sh          # install (apt) if needed, configure, start
#   bash workflow/scripts/slurm_cluster.sh stop
set -euo pipefail
conf=/etc/slurm/slurm.conf

if [[ ${1:-start} == stop ]]; then
    for daemon in slurmd slurmctld munged; do pkill -x "$daemon" || true; done
    exit 0
fi
if sinfo -h >/dev/null 2>&1; then
    echo "slurm: already running ($(sinfo -h -o '%D node(s), %c CPUs, %m MB' | head -1))"
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

host=$(hostname -s)
node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")   # CPUs, sockets, memory as found here
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat >"$conf" <<CONF
ClusterName=suite
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

[[ -s /etc/munge/munge.key ]] || mungekey --create
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "slurm: up ($(sinfo -h -o '%D node(s), %c CPUs, %m MB' | head -1))"
        exit 0
    fi
    sleep 1
done
echo "slurm: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
