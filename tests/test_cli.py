"""The command line: every subcommand has --help; bad input is a clear error, not a traceback."""

import json
import subprocess
import sys

import pytest

from rlhfkit.cli import STAGES, build_parser, main


@pytest.mark.parametrize("command", [*STAGES, "demo", "data"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rlhfkit " + command in capsys.readouterr().out


def test_trainer_flags_share_one_vocabulary(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sft", "--help"])
    text = capsys.readouterr().out
    for flag in ["--learning-rate", "--epochs", "--max-steps", "--batch-size", "--grad-accum", "--max-length",
                 "--seed", "--save-every", "--resume", "--lora-r", "--config"]:
        assert flag in text


def test_unknown_config_key_exits_with_a_message(tmp_path, capsys):
    config = tmp_path / "sft.yaml"
    config.write_text("model: m\ndata: d\noutput: o\nbatchsize: 4\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "unknown key 'batchsize' (did you mean 'batch_size'?)" in " ".join(capsys.readouterr().err.split())


def test_bad_data_exits_with_file_line_and_field(tmp_path, tiny_model_dir):
    data = tmp_path / "demos.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "sft", "--model", str(tiny_model_dir), "--data", str(data),
         "--output", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, env={"COLUMNS": "300", "PATH": "", "RLHFKIT_NO_PROGRESS": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "demos.jsonl:2" in result.stderr and "'completion'" in result.stderr


def test_data_check_reports_valid_records(tmp_path, capsys):
    data = tmp_path / "ranks.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]}) + "\n")
    main(["data", "check", str(data), "--kind", "preferences"])
    assert "3 valid preferences records" in " ".join(capsys.readouterr().err.split())


def test_tiny_model_builds_a_folder_that_transformers_loads(tmp_path, example_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main(["tiny-model", "--corpus", str(example_files["corpus"]), "--output", str(tmp_path / "qwen"),
          "--arch", "qwen2", "--vocab-size", "300", "--width", "32", "--heads", "2"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen")
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32
    assert len(AutoTokenizer.from_pretrained(tmp_path / "qwen")) == model.get_input_embeddings().num_embeddings


def test_a_wrong_tiny_model_arch_names_the_option_and_the_choices(tmp_path, example_files, capsys):
    from rlhfkit.models.tiny import ARCHITECTURES

    with pytest.raises(SystemExit) as exit_info:
        main(["tiny-model", "--corpus", str(example_files["corpus"]), "--output", str(tmp_path / "m"),
              "--arch", "gpt5"])
    assert exit_info.value.code == 2
    assert f"--arch 'gpt5': expected one of {', '.join(ARCHITECTURES)}" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "m").exists()
