"""The named configurations of the SSRL-family stage (ssrl.variants): every key they name or leave out is
a key of SSRLConfig, and every variant built from the shipped configs is a valid SSRLConfig."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import REPO, deep_update

from ssrl import variants
from ssrl.train.ssrl_config import SSRLConfig

FIELDS = {f.name for f in dataclasses.fields(SSRLConfig)}
DEMO = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
VOXCELEB = deep_update(DEMO, yaml.safe_load((REPO / "config" / "voxceleb.yaml").read_text()))


def test_every_named_key_is_a_stage_key():
    named = (
        set(variants.LABEL_UPDATE_KEYS)
        | set(variants.TEACHER_KEYS)
        | set(variants.WAVLM_STEP1_UNUSED)
        | set(variants.ITERATIVE_ROUND)
        | set(variants.WAVLM_FT_KEYS)
        | {key for step in variants.WAVLM_STEPS.values() for key in step}
    )
    assert named <= FIELDS, sorted(named - FIELDS)


@pytest.mark.parametrize("config", [DEMO, VOXCELEB], ids=["demo", "voxceleb"])
def test_variants_build_valid_stage_configs(config):
    arch = {"frontend": {"type": "wavlm"}, "encoder": {}}
    built = {
        "ssrl": variants.ssrl_hparams(config),
        "iterative": variants.iterative_hparams(config),
        **{step: variants.wavlm_hparams(config, step, arch) for step in variants.WAVLM_STEPS},
    }
    built.update(
        {
            name: variants.ssrl_hparams(config, **(overrides or {}))
            for name, overrides in (config.get("ablations") or {}).items()
        }
    )
    for name, hp in built.items():
        cfg = SSRLConfig.from_dict(hp["ssrl"], name)
        assert set(hp["augment"]) == set(variants.AUGMENT_KEYS)
        if "none_is_noise" not in ((config.get("ablations") or {}).get(name) or {}):
            assert cfg.none_is_noise == config["augment"]["student_none_is_noise"]
    it = SSRLConfig.from_dict(built["iterative"]["ssrl"])
    assert (it.label_update, it.nlm, it.update_epochs) == (False, False, 0)
    assert it.fixed_epochs == variants.iterative_round_epochs(config)
    assert not variants.LABEL_UPDATE_KEYS & set(built["iterative"]["ssrl"])
    step1_own = set(variants.WAVLM_STEPS["step1"]) | set(config["wavlm"]["step1"])
    assert not variants.WAVLM_STEP1_UNUSED & (set(built["step1"]["ssrl"]) - step1_own)
    assert built["step1"]["arch"] == arch and "arch" not in built["step2"]
    assert [SSRLConfig.from_dict(built[s]["ssrl"]).init for s in ("step1", "step2", "ft")] == [
        "scratch",
        "student",
        "full",
    ]


def test_iterative_round_epochs_budget_rule():
    cfg = {"iterative": {"budget": 1.0, "rounds": 5}, "ssrl": {"fixed_epochs": 5, "update_epochs": 100}}
    assert variants.iterative_round_epochs(cfg) == 21
    cfg["iterative"]["budget"] = 0.01
    assert variants.iterative_round_epochs(cfg) == 1
