#!/usr/bin/env bash
# Undo tests/slurm/start_slurm.sh DIR: cancel the jobs left, stop slurmd, slurmctld and munged (the
# processes whose pid files are in DIR), remove its /etc/slurm links and purge the packages that start_slurm.sh installed
# with their dependencies (DIR/installed-packages: exactly what it added), so that no SLURM client is left on PATH without a controller.
set -uo pipefail

DIR=${1:?usage: stop_slurm.sh DIR}

if [ -f "$DIR/slurmctld.pid" ] && command -v scancel >/dev/null; then
    timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
    # Let the job steps end (slurmstepd outlives a stopped slurmd).
    for _ in $(seq 60); do [ -z "$(timeout 5 squeue --noheader 2>/dev/null)" ] && break; sleep 0.5; done
fi
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
done
for conf in slurm.conf gres.conf; do
    [ "$(readlink "/etc/slurm/$conf")" = "$DIR/$conf" ] && rm -f "/etc/slurm/$conf"
done
if [ -s "$DIR/installed-packages" ]; then
    mapfile -t pkgs < "$DIR/installed-packages"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${pkgs[@]}" >"$DIR/apt-purge.log" 2>&1 &&
        rm -f "$DIR/installed-packages" ||
        { echo "apt-get purge failed (log: $DIR/apt-purge.log)" >&2; exit 1; }
fi
exit 0
