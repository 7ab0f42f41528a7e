#!/usr/bin/env bash
# Start a one-node SLURM (Debian's slurm-wlm 22.05 packages) for tests/test_slurm_real.py:
# munged, slurmctld and slurmd started by hand (no systemd), proctrack/linuxproc, task/none, no
# cgroups, no accounting database (sacct fails as on many clusters), MinJobAge 300. The node offers
# two partitions, `cpu` (default) and `gpu`, and a fake GPU (GRES whose File= devices are empty
# regular files), so that `gpu:` requests are satisfiable on a machine without GPUs.
#
#   tests/slurm/start_slurm.sh DIR    # as root; DIR receives slurm.conf (linked from /etc/slurm/),
#                                     # gres.conf, the fake GPUs, state and logs
#   tests/slurm/stop_slurm.sh DIR     # stops the daemons, removes the links and the packages it installed
#
# Packages missing are installed with apt-get (and recorded in DIR/installed-packages, for
# stop_slurm.sh to purge: with the clients installed but no controller, every `snakemake` start
# on the machine would wait on `scontrol`). Exits 0 with the cluster up, 2 when this machine cannot
# run it (the reason on the last line of stderr), 1 on a failure.
set -euo pipefail

DIR=${1:?usage: start_slurm.sh DIR}
PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge)
GPUS=1

cannot() { echo "cannot start SLURM here: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "not root (apt-get and the daemons need it)"
command -v apt-get >/dev/null && command -v dpkg-query >/dev/null || cannot "no apt-get (not a Debian-like system)"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    # No service may start during the installation (no init system in containers): the daemons
    # are started below, by hand. A policy-rc.d that already exists is left as it is.
    policy_added=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
        policy_added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Where the mirrors cannot be reached (an offline CI machine) apt gives up in about a minute.
    apt=(apt-get -o Acquire::Retries=0 -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30)
    dpkg-query -W -f='${Package}\n' | sort > "$DIR/packages-before"
    if ! { "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >"$DIR/apt.log" 2>&1 \
           || { "${apt[@]}" update -qq >>"$DIR/apt.log" 2>&1 \
                && "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/apt.log" 2>&1; }; }; then
        [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
        tail -5 "$DIR/apt.log" >&2
        cannot "apt-get could not install ${missing[*]} (log: $DIR/apt.log)"
    fi
    [ -n "$policy_added" ] && rm -f /usr/sbin/policy-rc.d
    # Everything this installation added (the packages and their dependencies), for stop_slurm.sh.
    dpkg-query -W -f='${Package}\n' | sort | comm -13 "$DIR/packages-before" - > "$DIR/installed-packages"
fi
version=$(dpkg-query -W -f='${Version}' slurmctld)
case "$version" in 22.05.*) ;; *) echo "note: slurmctld $version, written for 22.05" >&2 ;; esac

for conf in slurm.conf gres.conf; do
    [ -e "/etc/slurm/$conf" ] && cannot "/etc/slurm/$conf exists (a SLURM is configured here already)"
done
host=$(hostname -s)
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge" /run/munge
# Munge: a fresh key for this cluster, the socket at its standard place (the SLURM clients look there).
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$DIR/munge"
chmod 400 "$DIR/munge/munge.key"
if pgrep -x munged >/dev/null; then cannot "a munged is already running (not started by this script)"; fi
munged --force --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
       --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
       --socket=/run/munge/munge.socket.2
for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done

# The node as slurmd sees it (CPUs, sockets, cores, memory), plus the fake GPUs.
node=$(slurmd -C | head -1)
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
node=$(sed "s/RealMemory=[0-9]*/RealMemory=$(( mem * 9 / 10 ))/" <<<"$node")
for i in $(seq 0 $((GPUS - 1))); do : > "$DIR/gpu$i"; done

cat > "$DIR/slurm.conf" <<EOF
ClusterName=ssrltest
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=15
GresTypes=gpu
$node Gres=gpu:$GPUS NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
printf 'NodeName=%s Name=gpu File=%s/gpu[0-%d]\n' "$host" "$DIR" $((GPUS - 1)) > "$DIR/gres.conf"
# At the default place: the SLURM executor's in-job step drops SLURM_CONF from the environment.
for conf in slurm.conf gres.conf; do ln -s "$DIR/$conf" "/etc/slurm/$conf"; done

slurmctld -c -i
slurmd -c
for _ in $(seq 100); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
        echo "SLURM $version up: $(sinfo -h -N -o '%P %N %c CPUs %m MB %G' | tr '\n' ';')" >&2
        exit 0
    fi
    sleep 0.2
done
echo "the node did not become idle; slurmctld.log:" >&2
tail -20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
