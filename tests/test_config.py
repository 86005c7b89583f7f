"""Training configs: strict YAML, typed values, command-line overrides, the shipped files."""

import argparse
from pathlib import Path

import pytest

from pipelines.config import TrainConfig, apply_override, load_config
from pipelines.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "train"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_load():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"dit_tiny.yaml", "vae_tiny.yaml", "finetune_lora.yaml"} <= set(names)
    for name in names:
        if name != "finetune_lora.yaml":  # finetune fills data.root in from --data
            assert isinstance(load_config(CONFIGS / name), TrainConfig)
    cfg = load_config(CONFIGS / "dit_tiny.yaml")
    assert cfg.model.preset == "tiny" and cfg.data.buckets[1] == [1, 32, 32]


def test_unknown_key_names_the_key_and_the_nearest_valid_one(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'optim\.warmup_step'; did you mean 'optim\.warmup_steps'\?"):
        load_config(write(tmp_path, "data: {root: x}\noptim:\n  warmup_step: 10\n"))
    with pytest.raises(UserError, match=r"c\.yaml: unknown key 'stpes'; did you mean 'steps'\?"):
        load_config(write(tmp_path, "data: {root: x}\nstpes: 10\n"))
    with pytest.raises(UserError, match=r"unknown key 'dit\.given\.frist'; did you mean 'dit\.given\.first'"):
        load_config(write(tmp_path, "data: {root: x}\ndit: {given: {frist: 0.5}}\n"))


def test_mistyped_values_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"key 'steps' must be an integer, got 'many'"):
        load_config(write(tmp_path, "data: {root: x}\nsteps: many\n"))
    with pytest.raises(UserError, match=r"key 'data\.buckets\[0\]\[1\]' must be an integer"):
        load_config(write(tmp_path, "data: {root: x, buckets: [[9, big, 32]]}\n"))
    with pytest.raises(UserError, match=r"key 'optim' must be a mapping, got 0\.1"):
        load_config(write(tmp_path, "data: {root: x}\noptim: 0.1\n"))
    cfg = load_config(write(tmp_path, "data: {root: x}\noptim: {lr: 1e-4}\n"))  # YAML reads 1e-4 as text
    assert cfg.optim.lr == pytest.approx(1e-4)


def test_values_are_checked_together(tmp_path):
    with pytest.raises(UserError, match=r"optim\.schedule='linear' is invalid; expected 'cosine' or 'constant'"):
        load_config(write(tmp_path, "data: {root: x}\noptim: {schedule: linear}\n"))
    with pytest.raises(UserError, match=r"dit\.motion_weight=-1\.0 is invalid; expected a number >= 0"):
        load_config(write(tmp_path, "data: {root: x}\ndit: {motion_weight: -1.0}\n"))
    with pytest.raises(UserError, match=r"dit\.channel_weight=-1\.0 is invalid; expected a power >= 0"):
        load_config(write(tmp_path, "data: {root: x}\ndit: {channel_weight: -1.0}\n"))
    with pytest.raises(UserError, match=r"dit\.given_loss_weight=-0\.5 is invalid; expected a weight >= 0"):
        load_config(write(tmp_path, "data: {root: x}\ndit: {given_loss_weight: -0.5}\n"))
    with pytest.raises(UserError, match=r"dit\.reference_only=0\.5 is invalid; expected 0 unless .*given_reference"):
        load_config(write(tmp_path, "data: {root: x}\ndit: {reference_only: 0.5}\n"))
    with pytest.raises(UserError, match=r"dit\.reference_only=2\.0 is invalid; expected a share in \[0, 1\]"):
        load_config(write(tmp_path, "data: {root: x}\nmodel: {args: {given_reference: true}}\n"
                                    "dit: {reference_only: 2.0}\n"))
    assert load_config(write(tmp_path, "data: {root: x}\nmodel: {args: {given_reference: true}}\n"
                                       "dit: {reference_only: 0.5}\n")).dit.reference_only == 0.5
    with pytest.raises(UserError, match="no data"):
        load_config(write(tmp_path, "steps: 3\n"))
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))


def test_overrides_apply_on_top_and_are_strict(tmp_path):
    path = write(tmp_path, "data: {root: x}\noptim: {lr: 0.1}\nsteps: 10\n")
    cfg = load_config(path, ["optim.lr=3e-4", "steps=20", "dit.given.none=1.0", "deepspeed=null", "data.buckets=[[9,32,32]]"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.steps == 20 and cfg.dit.given.none == 1.0
    assert cfg.data.buckets == [[9, 32, 32]]
    with pytest.raises(UserError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        load_config(path, ["optim.lrr=1"])
    with pytest.raises(UserError, match="key=value"):
        apply_override(cfg, "steps")
    with pytest.raises(UserError, match=r"'steps' must be an integer"):
        load_config(path, ["steps=ten"])


def test_resolved_config_round_trips():
    cfg = load_config(CONFIGS / "dit_tiny.yaml", ["seed=7"])
    from pipelines.config import from_dict

    assert from_dict(TrainConfig, cfg.to_dict()) == cfg


def test_flag_values_stay_strings_where_yaml_would_read_them_otherwise(tmp_path):
    from pipelines.commands.train import add_arguments, overrides_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for out in ("2024", "yes", "runs/exp #2", "null", "runs/🎬 take 1"):
        args = parser.parse_args(["c.yaml", "--out", out, "--data", out, "--lr", "3e-4", "--steps", "7"])
        cfg = load_config(None, overrides_from_args(args))
        assert (cfg.out, cfg.data.root, cfg.optim.lr, cfg.steps) == (out, out, 3e-4, 7)
