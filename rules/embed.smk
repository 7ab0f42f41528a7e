# Embedding extraction (SPEC 5): any trained system's model file -> embeddings of a data set.
#   <system>/emb/{train,test}.npz   utts (N,) in wav.scp order, embeddings (N, dim) float32
# Whole utterances (WavLM systems: the first extract.max_seconds_wavlm seconds), the model
# file's eval_state (EMA teacher), length-bucketed zero-padded batches (exact), CUDA when the
# job has a GPU (the SLURM profile gives `extract` one).


rule extract:
    input:
        model=sys_path("{system}", "model.pt"),
        wav_scp=f"{DATA_DIR}/{{set}}/wav.scp",
    output:
        sys_path("{system}", "emb", "{set}.npz"),
    params:
        hparams=as_json(config["extract"]),
    wildcard_constraints:
        set=r"train|test",
    threads: 8
    log:
        log_path("extract/{system}/{set}"),
    benchmark:
        bench_path("extract/{system}/{set}")
    conda:
        ENV
    shell:
        script_cmd(
            "extract.py",
            "--model {input.model:q} --wav-scp {input.wav_scp:q} --hparams {params.hparams:q}"
            " --output {output:q} > {log:q} 2>&1",
            # compute threads: what the DataLoader processes (extract.workers) leave of the rule's threads
            omp=compute_threads(int(config["extract"]["workers"])),
        )
