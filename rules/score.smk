# Scoring (docs/method.md §10): cosine scores of a trial list, optionally AS-normalised against the
# system's train-set embeddings; EER (+ its threshold), minDCF at P_tar 0.01 and 0.05, DET points.
#   <system>/scores/<list>.tsv       enroll, test, label, score (with a header)
#   <system>/scores/<list>.det.tsv   far, frr (DET curve, increasing threshold)
#   <system>/metrics/<list>.json     eer, eer_threshold, min_dcf_0.01, min_dcf_0.05, counts, score_norm


rule score:
    input:
        emb=sys_path("{system}", "emb", "test.npz"),
        trials=f"{DATA_DIR}/trials/{{trials}}.txt",
        cohort=sys_path("{system}", "emb", "train.npz") if config["score"]["asnorm"] else [],
    output:
        scores=score_path("{system}", "{trials}", "scores"),
        det=score_path("{system}", "{trials}", "det"),
        metrics=score_path("{system}", "{trials}", "metrics"),
    log:
        log_path("score/{system}/{trials}"),
    benchmark:
        bench_path("score/{system}/{trials}")
    wildcard_constraints:
        trials=r"[A-Za-z0-9_-]+",
    conda:
        ENV
    threads: 4
    params:
        hparams=as_json(config["score"]),
        cohort=lambda wildcards, input: f"--cohort {shlex.quote(input.cohort)}" if input.cohort else "",
    shell:
        script_cmd(
            "score.py",
            "--emb {input.emb:q} --trials {input.trials:q} {params.cohort} --hparams {params.hparams:q}"
            " --scores {output.scores:q} --det {output.det:q} --metrics {output.metrics:q} >> {log:q} 2>&1",
        )
