# Stage 2, SSRL (docs/method.md §7) and its ablations: one rule, one script (train_ssrl.py), one system each.
#   <system>/model.pt        model file (eval_state = EMA teacher's SpeakerModel; student, teacher, AAM or
#                            softmax head; extra: label state, class -> k-means id map)
#   <system>/train_log.tsv   `step` rows every train.log_every steps, `epoch` rows (means, live classes, EER)
#   <system>/label_log.tsv   per epoch: phase, relabelled/replaced, live classes, label NMI/accuracy/purity,
#                            p_clean > 0.5 as a clean-label detector (TP/FP/TN/FN), loss, acc, teacher EER
#   <system>/train_record.json  cost and provenance of the training job (ssrl.train.cost)
# <system> is `ssrl` or an ablation name (config ablations: name -> overrides of the ssrl section).
# Inputs: the DINO model (encoder = its EMA teacher) and its k-means labels + centers; the training
# utt2spk is read for the label log only. <system>/ckpt/ (a params value, not an output) holds the
# resumable checkpoints and the live logs: a killed job resumes when rerun. Validation: EER of the
# teacher on the first trial list. One process on CPU or one GPU; resources gpu >= 2 runs torchrun.

import re

# name (ssrl_...) -> overrides of the ssrl section; an ablation set to null is left out (a config
# merged over another cannot delete its keys: `ablations: {ssrl_queue1: null}` drops one)
ABLATIONS = {name: overrides or {} for name, overrides in (config.get("ablations") or {}).items()
             if overrides is not None}
SSRL_SYSTEMS = ["ssrl", *ABLATIONS]
AUGMENT_LISTS = expand(f"{DATA_DIR}/augment/{{name}}.lst", name=["noise", "music", "babble", "rir"])


rule ssrl_train:
    input:
        wav_scp=f"{DATA_DIR}/train/wav.scp",
        utt2spk=f"{DATA_DIR}/train/utt2spk",
        init=sys_path("dino", "model.pt"),
        labels=kmeans_path("dino", "labels.txt"),
        centers=kmeans_path("dino", "centers.npy"),
        augment=AUGMENT_LISTS,
        val_scp=f"{DATA_DIR}/test/wav.scp",
        val_trials=f"{DATA_DIR}/trials/{TRIAL_LISTS[0]}.txt",
    output:
        model=sys_path("{system}", "model.pt"),
        log=sys_path("{system}", "train_log.tsv"),
        label_log=sys_path("{system}", "label_log.tsv"),
        record=sys_path("{system}", "train_record.json"),
    params:
        hparams=lambda wildcards: as_json(ssrl_stage_hparams(**ABLATIONS.get(wildcards.system, {}))),
        ckpt=lambda wildcards: sys_path(wildcards.system, "ckpt"),
        augment_dir=lambda wildcards, input: os.path.dirname(input.augment[0]),
    wildcard_constraints:
        system="|".join(re.escape(s) for s in SSRL_SYSTEMS),
    threads: 32
    resources:
        gpu=0,
    log:
        log_path("ssrl_train/{system}"),
    benchmark:
        bench_path("ssrl_train/{system}")
    conda:
        ENV
    shell:
        train_command("train_ssrl.py") + " --system {wildcards.system} --train-scp {input.wav_scp:q}"
        " --init-model {input.init:q} --labels {input.labels:q} --centers {input.centers:q}"
        f" {AUGMENT_ARG} --val-scp {{input.val_scp:q}} --val-trials {{input.val_trials:q}}"
        " --utt2spk {input.utt2spk:q} --ckpt-dir {params.ckpt:q} --model-out {output.model:q}"
        " --log-out {output.log:q} --label-log-out {output.label_log:q} --record-out {output.record:q} --hparams {params.hparams:q}"
        " >> {log:q} 2>&1"


# k-means of the SSRL systems' train-set embeddings (label quality after SSRL), requested by rule all:
# `ssrl` always, the ablations when kmeans.ablation_quality (a train-set extraction + k-means each).
SSRL_TARGETS = [kmeans_path(system, "quality.json")
                for system in (SSRL_SYSTEMS if config["kmeans"]["ablation_quality"] else ["ssrl"])]
