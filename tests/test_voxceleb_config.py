"""The VoxCeleb (paper) configuration, config/voxceleb.yaml, without VoxCeleb audio or SLURM.

On a fabricated VoxCeleb-shaped tree (tests/test_prepare.py's fabricators: real naming, real m4a,
real-format trial lists) the config, with its /path/to placeholders pointed at that tree, must
  * hold docs/method.md §11's paper values and pass the schema;
  * plan every stage under the SLURM profile (`snakemake --profile slurm -n`), each job with the
    profile's resources, the training jobs launched by torchrun with one worker per GPU;
  * plan only what one target needs (`snakemake -n <file>`).
The unedited config must stop at start-up naming every placeholder key. Dry runs only (no job
runs); `-d` keeps everything Snakemake writes in a scratch folder. A trial utterance without audio
is covered by test_prepare.py::test_voxceleb1_missing_utterances_are_counted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, deep_update
from test_prepare import make_augment, make_vox1, make_vox2, write_trial_list

VOXCELEB = REPO / "config" / "voxceleb.yaml"
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
PLACEHOLDER = "/path/to/"
# The WavLM stages join the plan once their rule file exists; the per-rule resource checks below
# then cover their wavlm_* set-resources entries like every other rule's.
WAVLM = (REPO / "rules" / "wavlm.smk").exists()

# VoxCeleb1 test utterances and the three cleaned lists over them ('1|0 spk/video/seg.wav ...').
VOX1_UTTS = [
    "id10270-x6uYqmx31kE-00001",
    "id10270-8jEAjG6SegY-00008",
    "id10300-ize_eiCFEg0-00003",
    "id10309-0cYFdtyWVds-00005",
]
TRIAL_LINES = {
    "vox1_o": [
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
        "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
    ],
    "vox1_e": [
        "0 id10300/ize_eiCFEg0/00003.wav id10309/0cYFdtyWVds/00005.wav",
        "1 id10270/8jEAjG6SegY/00008.wav id10270/x6uYqmx31kE/00001.wav",
    ],
    "vox1_h": [
        "0 id10309/0cYFdtyWVds/00005.wav id10270/8jEAjG6SegY/00008.wav",
        "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
    ],
}
PREPARE_RULES = {"prepare_scan", "prepare_convert", "prepare_train", "prepare_voxceleb1", "prepare_augment"}


def placeholders(node, where: str = "") -> list[tuple[str, str]]:
    """[(dotted key, value)] of the /path/to/... strings under ``node``, in file order."""
    if isinstance(node, dict):
        return [hit for k, v in node.items() for hit in placeholders(v, f"{where}.{k}" if where else str(k))]
    return [(where, node)] if isinstance(node, str) and node.startswith(PLACEHOLDER) else []


def substitute(node, root: Path):
    """``node`` with every /path/to/<rest> replaced by <root>/<rest>."""
    if isinstance(node, dict):
        return {k: substitute(v, root) for k, v in node.items()}
    if isinstance(node, str) and node.startswith(PLACEHOLDER):
        return str(root / node[len(PLACEHOLDER) :])
    return node


def fake_wavlm_checkpoint(path: Path, layers: int) -> None:
    """A file with the official WavLM-Large.pt layout ({"cfg", "model"}, gated relative-position
    parameters, ``layers`` layers) and no weights: what the workflow's start-up check looks at."""
    import torch

    torch.save(
        {"cfg": {"encoder_layers": layers}, "model": {"encoder.layers.0.self_attn.grep_a": torch.zeros(1)}}, path
    )


def value_at(cfg: dict, dotted: str):
    """The value of config key ``dotted`` (e.g. "dino.head.n_prototypes")."""
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def merged_config() -> dict:
    """config/config.yaml with config/voxceleb.yaml merged over it, as Snakemake merges them."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_update(base, yaml.safe_load(VOXCELEB.read_text()))


@pytest.fixture(scope="module")
def vox(tmp_path_factory) -> dict:
    """config/voxceleb.yaml with its placeholders pointed at a fabricated tree.

    Returns {"path": the config file, "config": it merged over config/config.yaml, "path_ecapa": the
    same without the WavLM systems (their start-up check imports torch: seconds per planning run),
    "tmp": a folder for scratch work directories}. The tree: VoxCeleb2 dev m4a (3 speakers, 7 files),
    VoxCeleb1 wavs and the three trial lists, MUSAN noise/music/speech and RIRS_NOISES simulated_rirs.
    """
    root = tmp_path_factory.mktemp("vox")
    raw = yaml.safe_load(VOXCELEB.read_text())
    cfg = substitute(raw, root / "data")
    merged = deep_update(merged_config(), cfg)
    corpus = cfg["corpus"]["voxceleb"]
    make_vox2(Path(corpus["vox2_root"]))
    make_vox1(Path(corpus["vox1_root"]), VOX1_UTTS)
    for name, path in corpus["trials"].items():
        write_trial_list(Path(path), TRIAL_LINES[name])
    for made, key in zip(make_augment(root / "augment"), ("musan", "rirs")):
        Path(corpus[key]).parent.mkdir(parents=True, exist_ok=True)
        made.rename(corpus[key])
    # Placeholders outside the corpus: the WavLM checkpoint gets a stand-in that passes the start-up
    # check (rules/common.smk wavlm_checkpoint_problem); a dry run only needs any other one to exist.
    for key, value in placeholders(raw):
        if not key.startswith("corpus."):
            path = Path(substitute(value, root / "data"))
            path.parent.mkdir(parents=True, exist_ok=True)
            if key == "wavlm.checkpoint":
                fake_wavlm_checkpoint(path, merged["wavlm"]["num_layers"])
            else:
                path.touch()
    path, path_ecapa = root / "voxceleb.yaml", root / "voxceleb_ecapa.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path_ecapa.write_text(yaml.safe_dump(deep_update(cfg, {"wavlm": {"enabled": False}}), sort_keys=False))
    return {"path": path, "config": merged, "path_ecapa": path_ecapa, "tmp": root}


def dry_run(
    configfile: Path, workdir: Path, *targets: str, profile: bool = True, check: bool = True
) -> subprocess.CompletedProcess:
    """`snakemake [--profile slurm] -n -p` from the repository root (where the `slurm` profile link
    is), working directory ``workdir``. --cores 256: the planner caps each rule's threads at --cores,
    while inside a SLURM job Snakemake caps them at the job's CPUs (cpus_per_task); a high value
    prints the threads, and so the OMP_NUM_THREADS, that the jobs run with."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *(["--profile", "slurm"] if profile else []),
        "-n",
        "-p",
        "--cores",
        "256",
        "--configfile",
        str(configfile),
        "-d",
        str(workdir),
        *targets,
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def planned_jobs(out: str) -> list[dict]:
    """The jobs of a Snakemake 9 dry run (-n -p), from its per-job blocks:

        rule dino_train:
            ...
            wildcards: system=ssrl, trials=vox1_o     (wildcard rules)
            threads: 32                               (only when > 1)
            resources: tmpdir=/tmp, mem_mb=128000, mem=128 GB, ..., cpus_per_task=32, gpu=4
        Shell command: ... nt=2; OMP_NUM_THREADS=$nt MKL_NUM_THREADS=$nt NUMBA_NUM_THREADS=$nt python ...

    Returns [{"rule", "wildcards" (dict), "threads" (int), "resources" (dict of str), "shell"}].
    """
    jobs: list[dict] = []
    for line in out.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line):
            jobs.append({"rule": m[1], "wildcards": {}, "threads": 1, "resources": {}, "shell": None})
        elif jobs and (m := re.fullmatch(r" {4}(wildcards|threads|resources): (.*)", line)):
            if m[1] == "threads":
                jobs[-1]["threads"] = int(m[2])
            else:
                jobs[-1][m[1]] = dict(item.split("=", 1) for item in m[2].split(", "))
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["shell"] = line[len("Shell command: ") :]
    return jobs


def job_stats(out: str) -> Counter:
    """The dry run's `Job stats` table: rule -> job count."""
    lines = out.splitlines()
    start = lines.index("Job stats:") + 3  # title, header, rule of dashes
    stats = Counter()
    for line in lines[start:]:
        name, count = line.split()
        if name == "total":
            return stats
        stats[name] = int(count)
    raise AssertionError("no `total` row in the job stats")


def by_rule(jobs: list[dict], rule: str) -> list[dict]:
    return [job for job in jobs if job["rule"] == rule]


def systems(cfg: dict) -> dict[str, list[str]]:
    """Trained systems of the paper run: all (scored on every trial list), those whose train-set
    embeddings are clustered (k-means), the ablations and the WavLM steps (when enabled)."""
    rounds = [f"iter_r{r}" for r in range(1, cfg["iterative"]["rounds"] + 1)]
    ablations = [name for name, overrides in cfg["ablations"].items() if overrides is not None]
    wavlm = ["wavlm_step1", "wavlm_step2", "wavlm_ft"] if WAVLM and (cfg.get("wavlm") or {}).get("enabled") else []
    clustered = ["dino", *rounds, "ssrl", *(ablations if cfg["kmeans"]["ablation_quality"] else [])]
    return {
        "all": ["dino", *rounds, "ssrl", *ablations, *wavlm],
        "clustered": clustered,
        "ablations": ablations,
        "wavlm": wavlm,
    }


@pytest.fixture(scope="module")
def full_plan(vox) -> tuple[str, list[dict]]:
    """The whole paper run planned under the SLURM profile: (output, jobs)."""
    out = dry_run(vox["path"], vox["tmp"] / "work_all").stdout
    return out, planned_jobs(out)


# --------------------------------------------------------------------------- the config itself


def test_paper_values_and_schema():
    """docs/method.md §11's paper column (and docs/method.md §3-§8 values it implies) in the merged config, which validates."""
    from snakemake.utils import validate

    cfg = merged_config()
    validate(cfg, str(REPO / "config" / "schema.yaml"))
    expected = {
        "corpus.kind": "voxceleb",
        "model.frontend.n_mels": 80,
        "model.frontend.n_fft": 512,
        "model.frontend.win_length": 400,
        "model.frontend.hop_length": 160,
        "model.frontend.f_max": 8000,
        "model.encoder.channels": 1024,
        "model.encoder.emb_dim": 512,
        "augment.snr_db": [0, 20],
        "augment.babble_count": [3, 8],
        "augment.student_none_is_noise": True,
        "dino.epochs": 150,
        "dino.batch_size": 240,
        "dino.lr": 0.25,
        "dino.min_lr": 1e-5,
        "dino.warmup_epochs": 10,
        "dino.head.n_prototypes": 65536,
        "dino.head.hidden": 2048,
        "dino.head.mid": 8192,
        "dino.head.bottleneck": 256,
        "dino.n_global": 2,
        "dino.global_crop_s": 4.0,
        "dino.n_local": 4,
        "dino.local_crop_s": 2.0,
        "dino.ema_start": 0.999,
        "dino.ema_end": 0.9999,
        "dino.teacher_temp": 0.04,
        "dino.student_temp": 0.1,
        "dino.clip_grad": 3.0,
        "dino.weight_decay": 5e-5,
        "kmeans.k": 8000,
        "kmeans.n_init": 1,
        "ssrl.fixed_epochs": 5,
        "ssrl.update_epochs": 100,
        "ssrl.batch_size": 480,
        "ssrl.lr": 1e-3,
        "ssrl.lr_fixed_start": 0.1,
        "ssrl.lr_update_start": 0.5,
        "ssrl.lr_final": 0.01,
        "ssrl.queue_len": 5,
        "ssrl.nlm": True,
        "ssrl.margin_quirk": True,
        "ssrl.sinkhorn_iters": 0,
        "ssrl.head": "aam",
        "ssrl.aam_scale": 32.0,
        "ssrl.aam_margin": 0.2,
        "ssrl.student_crop_s": 2.0,
        "ssrl.teacher_crop_s": 6.0,
        "ssrl.ema_start": 0.999,
        "ssrl.ema_end": 0.9999,
        "ssrl.gmm_max_iter": 500,
        "iterative.rounds": 5,
        "score.asnorm_top_n": 300,
        "score.allow_missing": False,
        "extract.device": "cuda",
        "extract.max_seconds_wavlm": 100,
        "train.device": "cuda",
        "tables.compare.ssrl": None,
    }
    assert {key: value_at(cfg, key) for key in expected} == expected
    # Every ablation is the paper's ssrl section with its own overrides only.
    ablations = {name: o for name, o in cfg["ablations"].items() if o is not None}
    assert sorted(ablations) == ["ssrl_clean_aug", "ssrl_no_nlm", "ssrl_plain_relabel", "ssrl_queue1", "ssrl_softmax"]
    assert all(set(o) <= set(cfg["ssrl"]) | {"none_is_noise"} for o in ablations.values())
    # The global batches split evenly over the profile's GPUs.
    gpus = int(PROFILE["set-resources"]["dino_train"]["gpu"])
    assert cfg["dino"]["batch_size"] % gpus == 0 and cfg["ssrl"]["batch_size"] % gpus == 0


@pytest.mark.parametrize(
    "run, ok", [("voxceleb", True), ("vox_2-b", True), ("..", False), ("a.b", False), ("x/y", False), ("", False)]
)
def test_run_name_is_a_plain_folder_name(run, ok):
    """config `run` names results/<run>/: no dots (so never `..`), no slashes."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = {**merged_config(), "run": run}
    if ok:
        validate(cfg, str(REPO / "config" / "schema.yaml"))
    else:
        with pytest.raises(WorkflowError) as err:
            validate(cfg, str(REPO / "config" / "schema.yaml"))
        assert "^[A-Za-z0-9_-]+$" in str(err.value) and repr(run) in str(err.value)


def test_placeholders_stop_the_workflow_naming_each_key(tmp_path):
    keys = placeholders(yaml.safe_load(VOXCELEB.read_text()))
    corpus_keys = [(k, v) for k, v in keys if k.startswith("corpus.")]
    assert {k for k, _ in corpus_keys} >= {
        "corpus.voxceleb.vox2_root",
        "corpus.voxceleb.vox1_root",
        "corpus.voxceleb.trials.vox1_o",
        "corpus.voxceleb.musan",
        "corpus.voxceleb.rirs",
        "corpus.voxceleb.conversion.flac_dir",
    }
    proc = dry_run(VOXCELEB, tmp_path / "work", check=False)
    assert proc.returncode != 0
    assert "set these corpus paths to your local copies (they are still placeholders):" in proc.stdout
    for key, value in corpus_keys:
        assert f"  {key}: {value}\n" in proc.stdout, key
    assert "Traceback" not in proc.stdout and "Building DAG" not in proc.stdout


def test_missing_trial_list_file_stops_the_plan(vox, tmp_path):
    """A configured trial list that does not exist: the plan fails naming the file (no job starts)."""
    missing = vox["tmp"] / "nowhere" / "list_test_hard2.txt"
    cfg = yaml.safe_load(vox["path_ecapa"].read_text())
    cfg["corpus"]["voxceleb"]["trials"]["vox1_h"] = str(missing)
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = dry_run(path, tmp_path / "work", check=False)
    assert proc.returncode != 0
    assert "Missing input files for rule prepare_voxceleb1" in proc.stdout and str(missing) in proc.stdout


# --------------------------------------------------------------------------- the whole run under SLURM


def test_profile_plans_every_stage(vox, full_plan):
    out, jobs = full_plan
    cfg = vox["config"]
    names = systems(cfg)
    lists = list(cfg["corpus"]["voxceleb"]["trials"])
    counts = Counter(job["rule"] for job in jobs)
    assert counts == job_stats(out)  # the parser saw every job
    n_shards = cfg["corpus"]["voxceleb"]["conversion"]["n_shards"]
    assert n_shards == 64
    assert {rule: counts[rule] for rule in PREPARE_RULES} == {
        "prepare_scan": 1,
        "prepare_convert": n_shards,
        "prepare_train": 1,
        "prepare_voxceleb1": 1,
        "prepare_augment": 1,
    }
    assert sorted(job["wildcards"]["shard"] for job in by_rule(jobs, "prepare_convert")) == [
        f"{i:03d}" for i in range(n_shards)
    ]
    assert counts["dino_train"] == 1
    assert sorted(job["wildcards"]["system"] for job in by_rule(jobs, "ssrl_train")) == sorted(
        ["ssrl", *names["ablations"]]
    )
    assert len(names["ablations"]) == 5
    assert sorted(int(job["wildcards"]["r"]) for job in by_rule(jobs, "iterative_train")) == [1, 2, 3, 4, 5]
    # a clustered system embeds its train and test sets in one job, every other system its test set
    both = [job["wildcards"]["system"] for job in by_rule(jobs, "extract_train_test")]
    assert sorted(both) == sorted(names["clustered"])
    extract = {(job["wildcards"]["system"], job["wildcards"]["set"]) for job in by_rule(jobs, "extract")}
    assert extract == {(s, "test") for s in names["all"] if s not in names["clustered"]}
    assert counts["extract"] == len(extract)
    kmeans = [(job["wildcards"]["system"], job["wildcards"]["k"]) for job in by_rule(jobs, "kmeans")]
    assert sorted(kmeans) == sorted((s, "8000") for s in names["clustered"])
    score = [(job["wildcards"]["system"], job["wildcards"]["trials"]) for job in by_rule(jobs, "score")]
    assert sorted(score) == sorted((s, t) for s in names["all"] for t in lists)
    assert lists == ["vox1_o", "vox1_e", "vox1_h"]
    assert counts["tables"] == counts["plots"] == 1
    assert {rule: counts[rule] for rule in names["wavlm"]} == dict.fromkeys(names["wavlm"], 1)
    # The training hyper-parameters reach the scripts as planned (paper values, not the demo's).
    assert '"n_prototypes": 65536' in by_rule(jobs, "dino_train")[0]["shell"]
    assert "--k 8000 " in by_rule(jobs, "kmeans")[0]["shell"]


def _launch(shell: str) -> tuple[int, str]:
    """(compute threads, launcher) of a job's shell command, evaluated by bash as the job would: a
    training command (rules/common.smk train_command: shell variables from threads and gpu) or a
    script_cmd line, both ``... nt=<n or $(( shell arithmetic ))>; OMP_NUM_THREADS=$nt
    MKL_NUM_THREADS=$nt NUMBA_NUM_THREADS=$nt <$run or python> ...`` after the log set-up (rules/common.smk LOG_ATTEMPT)."""
    start = shell.find("gpus=")
    shell = shell[start if start >= 0 else shell.find("; nt=") + 2 :]
    setup, sep, rest = shell.partition("; OMP_NUM_THREADS=$nt MKL_NUM_THREADS=$nt NUMBA_NUM_THREADS=$nt ")
    assert sep and (rest.startswith("$run ") or rest.startswith("python ")), shell[:300]
    out = subprocess.run(
        ["bash", "-c", f'{setup}; echo "$nt ${{run:-python}}"'], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    return int(out[0]), out[1].strip()


def test_jobs_get_the_profile_resources(full_plan):
    """Every job: its set-resources entry (else the default ones), threads within its CPUs; GPU jobs on
    one node of the GPU partition; multi-GPU training under torchrun, one worker per GPU."""
    _, jobs = full_plan
    default = PROFILE["default-resources"]
    workers = merged_config()["train"]["workers"]
    for job in jobs:
        if job["rule"] == "all":
            continue
        res = job["resources"]
        want = {**default, **PROFILE["set-resources"].get(job["rule"], {})}
        assert {key: res.get(key) for key in want} == {key: str(value) for key, value in want.items()}, job["rule"]
        assert job["threads"] <= int(res["cpus_per_task"]), (
            f"{job['rule']}: {job['threads']} threads but cpus_per_task {res['cpus_per_task']}: give it a "
            "set-resources entry in profiles/slurm/config.yaml"
        )
        gpus = int(res.get("gpu", 0))
        if gpus:
            assert res.get("nodes") == "1" and res["slurm_partition"] != default["slurm_partition"], job["rule"]
        if gpus >= 2:
            # train_command: the job's threads = gpu x (DataLoader workers + OpenMP threads per worker)
            omp = (job["threads"] - gpus * workers) // gpus
            assert omp >= 1 and gpus * (workers + omp) <= int(res["cpus_per_task"]), job["rule"]
            assert _launch(job["shell"]) == (omp, f"torchrun --standalone --nproc_per_node={gpus}"), job["rule"]
        else:  # one process, at most `threads` OpenMP threads
            omp, run = _launch(job["shell"])
            assert run == "python" and 1 <= omp <= job["threads"], job["shell"][:200]

    # Known answers for the paper's training jobs: 4 GPUs, 32 CPUs = 4 x (6 loader workers + 2 threads).
    for rule in ("dino_train", "ssrl_train", "iterative_train"):
        for job in by_rule(jobs, rule):
            assert (job["threads"], job["resources"]["gpu"], job["resources"]["cpus_per_task"]) == (32, "4", "32")
            assert _launch(job["shell"]) == (2, "torchrun --standalone --nproc_per_node=4")
    (extract,) = {
        (j["threads"], j["resources"]["gpu"], _launch(j["shell"]))
        for j in by_rule(jobs, "extract") + by_rule(jobs, "extract_train_test")
    }
    assert extract == (8, "1", (2, "python"))  # 8 CPUs = 6 loader workers + 2 threads
    (kmeans,) = {(j["threads"], j["resources"]["cpus_per_task"]) for j in by_rule(jobs, "kmeans")}
    assert kmeans == (16, "16")


# --------------------------------------------------------------------------- one target


def test_one_target_plans_only_its_needs(vox):
    cfg = vox["config"]
    n_shards = cfg["corpus"]["voxceleb"]["conversion"]["n_shards"]
    # The DINO model: data preparation and DINO training, nothing downstream (local planning, no profile).
    out = dry_run(vox["path_ecapa"], vox["tmp"] / "work_dino", "results/voxceleb/dino/model.pt", profile=False).stdout
    assert job_stats(out) == Counter(
        {
            "prepare_scan": 1,
            "prepare_convert": n_shards,
            "prepare_train": 1,
            "prepare_voxceleb1": 1,
            "prepare_augment": 1,
            "dino_train": 1,
        }
    )

    # SSRL's Vox1-O metrics: DINO, its train-set k-means, SSRL itself and SSRL's test embeddings; no
    # ablation, iterative round, other trial list or table. dino and ssrl are clustered systems: each
    # embeds its train and test sets in one job.
    out = dry_run(vox["path_ecapa"], vox["tmp"] / "work_ssrl", "results/voxceleb/ssrl/metrics/vox1_o.json").stdout
    jobs = planned_jobs(out)
    stats = job_stats(out)
    assert {rule: n for rule, n in stats.items() if rule not in PREPARE_RULES} == {
        "dino_train": 1,
        "extract_train_test": 2,
        "kmeans": 1,
        "ssrl_train": 1,
        "score": 1,
    }
    assert [j["wildcards"]["system"] for j in by_rule(jobs, "ssrl_train")] == ["ssrl"]
    assert sorted(j["wildcards"]["system"] for j in by_rule(jobs, "extract_train_test")) == ["dino", "ssrl"]
    assert [j["wildcards"]["system"] for j in by_rule(jobs, "kmeans")] == ["dino"]
    assert [(j["wildcards"]["system"], j["wildcards"]["trials"]) for j in by_rule(jobs, "score")] == [
        ("ssrl", "vox1_o")
    ]
