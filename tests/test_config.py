import argparse

import pytest

from rlhfkit.config import ConfigError, SFTConfig
from rlhfkit.config_parse import add_config_arguments, config_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SFTConfig)
    return config_from_args(SFTConfig, parser.parse_args(argv))


def test_yaml_file_then_command_line_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: m\ndata: d.jsonl\noutput: out\nlearning_rate: 1e-4\nbatch_size: 4\npacking: true\n")
    config = parse(["--config", str(path), "--batch-size", "2", "--lora-target-modules", "q_proj", "v_proj"])
    assert config.learning_rate == pytest.approx(1e-4)  # YAML reads 1e-4 as a string: still a float here
    assert config.batch_size == 2  # the flag wins over the file
    assert config.packing is True
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.max_length == SFTConfig().max_length  # untouched default


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: m\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        parse(["--config", str(path)])


def test_wrong_type_is_an_error_naming_key_and_type(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model: m\ndata: d\noutput: o\nbatch_size: eight\n")
    with pytest.raises(ConfigError, match=r"key 'batch_size': expected an integer, got 'eight'"):
        parse(["--config", str(path)])
    path.write_text("packing: 1\n")
    with pytest.raises(ConfigError, match=r"key 'packing': expected true or false"):
        parse(["--config", str(path)])


def test_wrong_type_on_the_command_line():
    with pytest.raises(SystemExit):
        parse(["--model", "m", "--data", "d", "--output", "o", "--epochs", "many"])


def test_missing_required_setting_names_the_flag():
    with pytest.raises(ConfigError, match="--data"):
        parse(["--model", "m", "--output", "o"])


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse(["--config", str(path)])


def test_choice_fields_list_the_registries_and_refuse_other_values():
    import dataclasses

    from rlhfkit.config import DPOConfig, PPOConfig
    from rlhfkit.losses import DPO_LOSSES, UNPAIRED_LOSSES
    from rlhfkit.recipes import RECIPES
    from rlhfkit.rl_losses import ADVANTAGE_ESTIMATORS, GROUP_SCALES, LOSS_AGGREGATIONS, POLICY_LOSSES

    choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(PPOConfig) if f.metadata.get("choices")}
    assert set(choices["estimator"]) == set(ADVANTAGE_ESTIMATORS)
    assert choices["policy_loss"] == POLICY_LOSSES and choices["loss_aggregation"] == LOSS_AGGREGATIONS
    assert choices["advantage_scale"] == GROUP_SCALES and set(choices["recipe"]) == set(RECIPES)
    with pytest.raises(ConfigError, match="--recipe 'ppo3': expected one of none, dapo, dr_grpo, gspo, cispo"):
        PPOConfig(recipe="ppo3")
    from rlhfkit.config import TinyModelConfig
    from rlhfkit.models.tiny import ARCHITECTURES

    arch = next(f for f in dataclasses.fields(TinyModelConfig) if f.name == "arch").metadata["choices"]
    assert arch == ARCHITECTURES  # `rlhfkit tiny-model --arch` offers every family tiny_config builds
    loss = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss").metadata["choices"]
    assert set(loss) == set(DPO_LOSSES) | set(UNPAIRED_LOSSES)
    with pytest.raises(ConfigError, match=r"--estimator 'ppo2': expected one of gae, grpo, rloo, reinforce\+\+"):
        PPOConfig(estimator="ppo2")
    with pytest.raises(ConfigError, match="--kl-penalty 'both'"):
        PPOConfig(kl_penalty="both")


def config_classes():
    import dataclasses

    import rlhfkit.config as config_module

    return [c for c in vars(config_module).values()
            if isinstance(c, type) and c.__module__ == config_module.__name__ and dataclasses.is_dataclass(c)]


UNBOUNDED_NUMBERS = {"missing_eos_score"}  # any score is a valid replacement score


def test_every_numeric_option_declares_its_range_and_values_outside_it_are_refused():
    """A config error naming the option for a value just outside each declared bound (and NaN), in every
    stage's config; every int or float option declares a range."""
    import dataclasses
    import math
    import typing

    checked = 0
    for cls in config_classes():
        hints = typing.get_type_hints(cls)
        required = {f.name: "x" for f in dataclasses.fields(cls) if f.metadata.get("required")}
        for f in dataclasses.fields(cls):
            kinds = set(typing.get_args(hints[f.name])) | {hints[f.name]}
            numeric = ({int, float} & kinds) and bool not in kinds
            if not numeric or f.name in UNBOUNDED_NUMBERS:
                continue
            bounds = f.metadata.get("bounds")
            assert bounds, f"{cls.__name__}.{f.name}: a numeric option without a declared range"
            step = 1 if int in kinds and float not in kinds else 1e-9
            flag = "--" + f.name.replace("_", "-")
            for name, bound in bounds.items():
                value = {"minimum": bound - step, "greater_than": bound, "maximum": bound + step,
                         "less_than": bound}[name]
                with pytest.raises(ConfigError, match=flag):
                    cls(**{**required, f.name: value})
                checked += 1
            if float in kinds:
                with pytest.raises(ConfigError, match=f"{flag} nan: expected a finite number"):
                    cls(**{**required, f.name: math.nan})
    assert checked > 100  # bounds of 14 config classes, inherited fields counted in each


def test_bad_numbers_on_the_command_line_are_one_line_errors(capsys):
    from rlhfkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--model", "m", "--data", "d", "--output", "o", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size 0: expected an integer >= 1" in capsys.readouterr().err
