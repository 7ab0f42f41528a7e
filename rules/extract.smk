# Embedding extraction (docs/method.md §5; library ssrl.extract, script workflow/scripts/extract.py):
# any trained system's model file -> embeddings of a data set.
#   <system>/emb/{train,test}.npz   utts (N,) in wav.scp order, embeddings (N, dim) float32
# Whole utterances (WavLM systems: the first extract.max_seconds_wavlm seconds), the model
# file's eval_state (EMA teacher), length-bucketed zero-padded batches (exact), CUDA when the
# job has a GPU (the SLURM profile gives `extract` one).
# A system whose train-set embeddings the workflow uses (k-means of dino, ssrl and the iterative
# rounds; the ablations with kmeans.ablation_quality; every system as the AS-norm cohort) gets both
# sets from one job (extract_train_test: one process start and model load instead of two); every
# other system embeds only what is asked for (extract).


ruleorder: extract_train_test > extract


rule extract_train_test:
    input:
        model=sys_path("{system}", "model.pt"),
        train=f"{DATA_DIR}/train/wav.scp",
        test=f"{DATA_DIR}/test/wav.scp",
    output:
        train=sys_path("{system}", "emb", "train.npz"),
        test=sys_path("{system}", "emb", "test.npz"),
    log:
        log_path("extract/{system}/train_test"),
    benchmark:
        bench_path("extract/{system}/train_test")
    wildcard_constraints:
        system=train_embedding_systems(),
    priority: iterative_chain_priority
    conda:
        ENV
    threads: 8
    params:
        hparams=as_json(config["extract"]),
    shell:
        extract_command([("{input.train:q}", "{output.train:q}"), ("{input.test:q}", "{output.test:q}")])


rule extract:
    input:
        model=sys_path("{system}", "model.pt"),
        wav_scp=f"{DATA_DIR}/{{set}}/wav.scp",
    output:
        sys_path("{system}", "emb", "{set}.npz"),
    log:
        log_path("extract/{system}/{set}"),
    benchmark:
        bench_path("extract/{system}/{set}")
    wildcard_constraints:
        set=r"train|test",
    conda:
        ENV
    threads: 8
    params:
        hparams=as_json(config["extract"]),
    shell:
        extract_command([("{input.wav_scp:q}", "{output:q}")])
