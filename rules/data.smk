# Data preparation (placeholder until the demo corpus rule lands).
rule demo_corpus:
    output:
        f"{DATA_DIR}/train/wav.scp",
    log:
        log_path("demo_corpus"),
    conda:
        ENV
    shell:
        "echo placeholder > {output} 2> {log}"
