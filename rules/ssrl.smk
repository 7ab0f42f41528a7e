# Stage 2, SSRL (docs/method.md §7) and its ablations: one rule, one script (train_ssrl.py), one system each.
#   <system>/model.pt        model file (eval_state = EMA teacher's SpeakerModel; student, teacher, AAM or
#                            softmax head; extra: label state, class -> k-means id map)
#   <system>/train_log.tsv   `step` rows every train.log_every steps, `epoch` rows (means, live classes, EER)
#   <system>/label_log.tsv   per epoch: phase, relabelled/replaced, live classes, label NMI/accuracy/purity,
#                            p_clean > 0.5 as a clean-label detector (TP/FP/TN/FN), loss, acc, teacher EER
#   <system>/train_record.json  cost and provenance of the training job (ssrl.train.record)
# <system> is `ssrl` or an ablation name (ABLATIONS, rules/common.smk: config ablations, name -> overrides
# of the ssrl section; ssrl.variants builds the hyper-parameters).
# Inputs: the DINO model (encoder = its EMA teacher) and its k-means labels + centers; the training
# utt2spk is read for the label log only. <system>/ckpt/ (a params value, not an output) holds the
# resumable checkpoints and the live logs: a killed job resumes when rerun. Validation: EER of the
# teacher on the first trial list. One process on CPU or one GPU; resources gpu >= 2 runs torchrun.


rule ssrl_train:
    input:
        **ssrl_train_input(
            init=sys_path("dino", "model.pt"),
            labels=kmeans_path("dino", "labels.txt"),
            centers=kmeans_path("dino", "centers.npy"),
        ),
    output:
        **ssrl_train_output("{system}"),
    log:
        log_path("ssrl_train/{system}"),
    benchmark:
        bench_path("ssrl_train/{system}")
    wildcard_constraints:
        system="|".join(re.escape(s) for s in SSRL_SYSTEMS),
    priority: PRIORITY["ssrl"]
    conda:
        ENV
    threads: 32
    resources:
        gpu=0,
    params:
        **ssrl_train_params(
            lambda wildcards: wildcards.system,
            lambda wildcards: _variants.ssrl_hparams(config, **ABLATIONS.get(wildcards.system, {})),
        ),
    shell:
        ssrl_train_shell()
