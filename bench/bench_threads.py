"""Cost of a demo-sized training step (mel front-end + ECAPA, forward and backward, SGD) under the
thread settings a Snakemake job gets: OMP_NUM_THREADS = the job's compute threads, MKL_NUM_THREADS
as Snakemake sets it (the rule's threads) or equal to OMP_NUM_THREADS (rules/common.smk thread_env).

Each setting runs in its own process (the variables are read when torch loads), alternating
``--repeat`` times; prints wall and CPU seconds (all threads) of ``--steps`` steps per run.

    python bench/bench_threads.py                       # OMP 1 with MKL 1 vs MKL 2
    python bench/bench_threads.py --settings 2:2 2:4 --steps 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import time, torch
from ssrl.models.speaker import build_speaker_model
torch.manual_seed(0)
model = build_speaker_model({"frontend": {"type": "mel", "n_mels": 80}, "encoder": {"channels": 64, "emb_dim": 128}})
wave = torch.randn(%(batch)d, %(samples)d)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
def step():
    opt.zero_grad(); model(wave).pow(2).mean().backward(); opt.step()
step()
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(%(steps)d):
    step()
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["1:1", "1:2"], help="OMP:MKL thread pairs")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="crops per step")
    parser.add_argument("--crop-s", type=float, default=1.5, help="seconds per crop (16 kHz)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    code = CHILD % {"batch": args.batch, "samples": round(args.crop_s * 16000), "steps": args.steps}
    print(f"{args.steps} steps of {args.batch} x {args.crop_s} s; load average {os.getloadavg()[0]:.2f}")
    print("OMP MKL  wall s   CPU s")
    for _ in range(args.repeat):
        for setting in args.settings:
            omp, mkl = setting.split(":")
            env = {**os.environ, "OMP_NUM_THREADS": omp, "MKL_NUM_THREADS": mkl}
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            wall, cpu = (float(x) for x in out.stdout.split())
            print(f"{omp:>3} {mkl:>3} {wall:7.2f} {cpu:7.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
