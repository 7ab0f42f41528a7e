#!/usr/bin/env bash
# The demo on several corpus seeds: one full run per seed (every system of every table), each in
# results/demo_s<seed>/, then the learning checks of all of them (bench/demo_seeds.py).
#   bash bench/demo_seeds.sh            # seeds 0 1 2, one after the other, on all cores
#   SEEDS="1" CORES=2 bash bench/demo_seeds.sh
# Seed 0 is the default `make demo` (results/demo/ holds the same run under the name demo).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1 2"}
CORES=${CORES:-all}
runs=()
for seed in $SEEDS; do
    cfg=$(mktemp --suffix=.yaml)
    printf 'run: demo_s%s\ncorpus:\n  demo:\n    seed: %s\n' "$seed" "$seed" > "$cfg"
    .venv/bin/snakemake --profile profiles/demo --cores "$CORES" --configfile "$cfg"
    rm -f "$cfg"
    runs+=("demo_s$seed")
done
.venv/bin/python bench/demo_seeds.py "${runs[@]}"
