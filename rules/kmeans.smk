# k-means pseudo labels (docs/method.md §6; workflow/scripts/kmeans.py) from a system's train-set embeddings,
# with their quality against the true speakers (data/train/utt2spk; never read by training).
#   <system>/kmeans_k<k>/labels.txt    utt label
#   <system>/kmeans_k<k>/centers.npy   (k, dim) float32 cluster means of the normalised embeddings
#   <system>/kmeans_k<k>/quality.json  NMI / accuracy / purity, cluster sizes, n_iter, inertia, time
#   <system>/kmeans_k<k>/sizes.png     cluster-size histogram
# Downstream rules name their labels with kmeans_path(system, "labels.txt") (k = config kmeans.k).


rule kmeans:
    input:
        emb=sys_path("{system}", "emb", "train.npz"),
        utt2spk=f"{DATA_DIR}/train/utt2spk",
    output:
        labels=sys_path("{system}", "kmeans_k{k}", "labels.txt"),
        centers=sys_path("{system}", "kmeans_k{k}", "centers.npy"),
        quality=sys_path("{system}", "kmeans_k{k}", "quality.json"),
        plot=sys_path("{system}", "kmeans_k{k}", "sizes.png"),
    log:
        log_path("kmeans/{system}_k{k}"),
    benchmark:
        bench_path("kmeans/{system}_k{k}")
    wildcard_constraints:
        k=r"[1-9][0-9]*",
    priority: iterative_chain_priority
    conda:
        ENV
    threads: 16
    resources:
        gpu=0,  # the SLURM profile gives it one (kmeans.device auto then runs Lloyd on it)
    params:
        hparams=as_json({key: config["kmeans"][key] for key in ("max_iter", "seed", "n_init", "device")}),
    shell:
        script_cmd(
            "kmeans.py",
            "--emb {input.emb:q} --k {wildcards.k} --utt2spk {input.utt2spk:q} --hparams {params.hparams:q}"
            " --labels {output.labels:q} --centers {output.centers:q} --quality {output.quality:q}"
            " --plot {output.plot:q} >> {log:q} 2>&1",
        )
