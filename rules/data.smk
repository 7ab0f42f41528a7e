# Data preparation: every corpus kind writes the same manifests under data/ (docs/internals.md):
#   data/train/{wav.scp,utt2spk}, data/test/{wav.scp,utt2spk}, data/trials/<list>.txt,
#   data/augment/{noise,music,babble,rir}.lst
# TRIAL_LISTS (rules/common.smk) names the trial lists that downstream rules score.

# ---------------------------------------------------------------------------------------
# The embedded demo (corpus.kind demo), ssrl.demo: a seeded synthetic corpus. The audio
# (corpus/{train,test}/, corpus/musan/, corpus/RIRS_NOISES/) is not declared file by file;
# the manifests that list it are the outputs. corpus/baseline.json holds the EER of a fixed
# MFCC-mean cosine baseline on the demo trials (how hard the corpus is).
if config["corpus"]["kind"] == "demo":

    rule demo_corpus:
        output:
            train=multiext(f"{DATA_DIR}/train/", "wav.scp", "utt2spk"),
            test=multiext(f"{DATA_DIR}/test/", "wav.scp", "utt2spk"),
            trials=f"{DATA_DIR}/trials/demo.txt",
            augment=AUGMENT_LISTS,
            baseline=run_path("corpus", "baseline.json"),
        log:
            log_path("demo_corpus"),
        benchmark:
            bench_path("demo_corpus")
        conda:
            ENV
        threads: 2
        params:
            hparams=as_json(config["corpus"]["demo"]),
            corpus_dir=lambda wildcards, output: os.path.dirname(output.baseline),
            data_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.trials)),
        shell:
            script_cmd(
                "make_demo.py",
                "--hparams {params.hparams:q} --corpus-dir {params.corpus_dir:q} --data-dir {params.data_dir:q}"
                " --workers {threads} >> {log:q} 2>&1",
            )


# ---------------------------------------------------------------------------------------
# Real corpora (corpus.kind voxceleb | generic), ssrl.prepare:
#   prepare_scan     list the corpus, check disk space, speakers -> n_shards lists (round robin)
#   prepare_convert  one job per shard: m4a -> 16 kHz FLAC (complete FLACs are kept),
#                    WAV/FLAC checked; unreadable files are listed, up to max_failures
#   prepare_train    (voxceleb) shards -> data/train; prepare_sets (generic) -> data/train,
#                    data/test and data/trials; both write prepare/summary.json
#   prepare_voxceleb1, prepare_augment: test set + trials from VoxCeleb1 lists, augmentation lists
#                    (MUSAN/RIR folders, folders or list files per source, or empty lists: augment none)
# The shard count is fixed when the DAG is built (the config's, or one per speaker folder up to 64),
# so `snakemake -n` shows every job without a checkpoint.
if config["corpus"]["kind"] in ("voxceleb", "generic"):
    _PREP_KIND = config["corpus"]["kind"]
    _PREP = config["corpus"][_PREP_KIND]
    # config/voxceleb.yaml ships /path/to/... placeholders: name each one left, before planning any job.
    _PREP_UNSET = placeholder_keys(_PREP, f"corpus.{_PREP_KIND}")
    if _PREP_UNSET:
        raise ValueError(
            "set these corpus paths to your local copies (they are still placeholders):\n"
            + "\n".join(f"  {key}: {value}" for key, value in _PREP_UNSET)
        )
    _PREP_CONV = _PREP["conversion"]
    # The corpus folder(s) whose <speaker> folders are scanned; n_shards unset: one shard per speaker
    # folder (round robin never leaves one empty), at most 64. Listing the folders is cheap.
    _PREP_ROOTS = (
        [os.path.join(_PREP["vox2_root"], "dev", "aac")]
        if _PREP_KIND == "voxceleb"
        else [_PREP["root"]] if isinstance(_PREP["root"], str) else list(_PREP["root"])
    )
    _PREP_N_SHARDS = _PREP_CONV["n_shards"] or max(
        1,
        min(
            64,
            sum(
                len([e for e in os.scandir(r) if e.is_dir() and not e.name.startswith(".")]) if os.path.isdir(r) else 0
                for r in _PREP_ROOTS
            ),
        ),
    )
    _PREP_WIDTH = max(3, len(str(_PREP_N_SHARDS - 1)))
    PREPARE_SHARDS = [f"{i:0{_PREP_WIDTH}d}" for i in range(_PREP_N_SHARDS)]
    # Augmentation sources: MUSAN/RIRS_NOISES folders, per-list folders or list files, or none.
    _PREP_AUGMENT = _PREP.get("augment") or {}
    _PREP_AUGMENT_SOURCES = (
        None if _PREP_AUGMENT == "none" else {"musan": _PREP.get("musan"), "rirs": _PREP.get("rirs"), **_PREP_AUGMENT}
    )
    # Trial list name -> local file (null entries skipped); downstream rules score each name.
    _PREP_LISTS = {name: path for name, path in (_PREP.get("trials") or {}).items() if path}
    if "split" not in _PREP and not _PREP_LISTS:
        raise ValueError(f"corpus.{_PREP_KIND}.trials: every trial list is null; configure at least one")

    # results/<run>/prepare/: shard lists, per-shard results and the summaries.
    _SHARD = run_path("prepare", "shards", "{shard}")
    _SHARD_LISTS = expand(f"{_SHARD}.files.tsv", shard=PREPARE_SHARDS)
    _SHARD_USABLE = expand(f"{_SHARD}.usable.tsv", shard=PREPARE_SHARDS)
    _SHARD_SUMMARIES = expand(f"{_SHARD}.json", shard=PREPARE_SHARDS)

    rule prepare_scan:
        output:
            shards=_SHARD_LISTS,
            summary=run_path("prepare", "scan.json"),
        log:
            log_path("prepare_scan"),
        conda:
            ENV
        params:
            hparams=as_json(
                {
                    "kind": "voxceleb2" if _PREP_KIND == "voxceleb" else "generic",
                    "root": _PREP["vox2_root"] if _PREP_KIND == "voxceleb" else _PREP_ROOTS,
                    "flac_dir": _PREP_CONV.get("flac_dir"),
                    "size_ratio": _PREP_CONV["size_ratio"],
                    "disk_margin_gb": _PREP_CONV["disk_margin_gb"],
                }
            ),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "scan --hparams {params.hparams:q} --shards {output.shards:q}"
                " --summary {output.summary:q} >> {log:q} 2>&1",
            )

    rule prepare_convert:
        input:
            f"{_SHARD}.files.tsv",
        output:
            records=f"{_SHARD}.usable.tsv",
            summary=f"{_SHARD}.json",
        log:
            log_path("prepare_convert_{shard}"),
        wildcard_constraints:
            shard=r"\d+",
        conda:
            ENV
        threads: 1
        params:
            hparams=as_json({"max_failures": _PREP_CONV["max_failures"]}),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "convert --hparams {params.hparams:q} --shard {input:q}"
                " --records {output.records:q} --summary {output.summary:q} >> {log:q} 2>&1",
            )

    rule prepare_augment:
        output:
            noise=f"{DATA_DIR}/augment/noise.lst",
            music=f"{DATA_DIR}/augment/music.lst",
            babble=f"{DATA_DIR}/augment/babble.lst",
            rir=f"{DATA_DIR}/augment/rir.lst",
        log:
            log_path("prepare_augment"),
        conda:
            ENV
        params:
            hparams=as_json({"sources": _PREP_AUGMENT_SOURCES}),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "augment --hparams {params.hparams:q} --noise {output.noise:q}"
                " --music {output.music:q} --babble {output.babble:q} --rir {output.rir:q} >> {log:q} 2>&1",
            )


if config["corpus"]["kind"] == "voxceleb":

    rule prepare_train:
        input:
            records=_SHARD_USABLE,
            summaries=_SHARD_SUMMARIES,
        output:
            wav_scp=f"{DATA_DIR}/train/wav.scp",
            utt2spk=f"{DATA_DIR}/train/utt2spk",
            summary=run_path("prepare", "summary.json"),
        log:
            log_path("prepare_train"),
        conda:
            ENV
        params:
            hparams=as_json({"kind": "voxceleb2", "max_failures": _PREP_CONV["max_failures"]}),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "merge --hparams {params.hparams:q} --records {input.records:q}"
                " --summaries {input.summaries:q} --wav-scp {output.wav_scp:q} --utt2spk {output.utt2spk:q}"
                " --summary {output.summary:q} >> {log:q} 2>&1",
            )

    rule prepare_voxceleb1:
        input:
            list(_PREP_LISTS.values()),
        output:
            wav_scp=f"{DATA_DIR}/test/wav.scp",
            utt2spk=f"{DATA_DIR}/test/utt2spk",
            trials=[f"{DATA_DIR}/trials/{name}.txt" for name in _PREP_LISTS],
        log:
            log_path("prepare_voxceleb1"),
        conda:
            ENV
        params:
            hparams=as_json({"root": _PREP["vox1_root"], "trials": _PREP_LISTS}),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "voxceleb1 --hparams {params.hparams:q} --wav-scp {output.wav_scp:q}"
                " --utt2spk {output.utt2spk:q} --trials {output.trials:q} >> {log:q} 2>&1",
            )


if config["corpus"]["kind"] == "generic":

    rule prepare_sets:
        input:
            records=_SHARD_USABLE,
            summaries=_SHARD_SUMMARIES,
            lists=list(_PREP_LISTS.values()),
        output:
            train=multiext(f"{DATA_DIR}/train/", "wav.scp", "utt2spk"),
            test=multiext(f"{DATA_DIR}/test/", "wav.scp", "utt2spk"),
            trials=[f"{DATA_DIR}/trials/{name}.txt" for name in TRIAL_LISTS],
            summary=run_path("prepare", "summary.json"),
        log:
            log_path("prepare_sets"),
        conda:
            ENV
        params:
            hparams=as_json(
                {
                    "kind": "generic",
                    "max_failures": _PREP_CONV["max_failures"],
                    "roots": _PREP_ROOTS,
                    "holdout": _PREP["holdout"],
                    "train": _PREP.get("train"),
                    "test": _PREP.get("test"),
                    **({"split": _PREP["split"]} if "split" in _PREP else {"trials": _PREP_LISTS}),
                }
            ),
            out_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.train[0])),
        shell:
            script_cmd(
                "prepare_corpus.py",
                "merge --hparams {params.hparams:q} --records {input.records:q}"
                " --summaries {input.summaries:q} --out-dir {params.out_dir:q} --summary {output.summary:q}"
                " >> {log:q} 2>&1",
            )
