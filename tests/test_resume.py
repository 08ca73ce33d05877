"""--resume continues only the run it belongs to: changed settings or inputs are refused, naming each
change; the harmless ones (how often to log or save, --max-steps to extend) are allowed; Ctrl-C says
how to resume and exits 130."""

import json
import shutil

import pytest

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, SFTConfig
from rlhfkit.train.run_record import fingerprint
from rlhfkit.train.sft import run_sft


def sft_config(model_dir, data, output, **overrides):
    settings = dict(model=str(model_dir), data=str(data), output=str(output), learning_rate=3e-3, batch_size=4,
                    max_length=96, eval_split=0.0, warmup_ratio=0.0, log_every=1, save_every=2, max_steps=2,
                    device="cpu")
    settings.update(overrides)
    return SFTConfig(**settings)


def steps_logged(output):
    return [r["step"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_resume_refuses_a_changed_run_and_allows_harmless_changes(tmp_path, tiny_model_dir, example_files):
    data = tmp_path / "data.jsonl"
    shutil.copy(example_files["demonstrations"], data)
    output = tmp_path / "run"
    run_sft(sft_config(tiny_model_dir, data, output))

    with pytest.raises(ConfigError, match=r"changed: --learning-rate 0.003 -> 0.001; --seed 42 -> 7\."):
        run_sft(sft_config(tiny_model_dir, data, output, resume=True, learning_rate=1e-3, seed=7))
    other_model = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other_model)
    with pytest.raises(ConfigError, match="--model"):
        run_sft(sft_config(tiny_model_dir, data, output, resume=True, model=str(other_model)))
    # the same path with other contents is a change too
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])
    with pytest.raises(ConfigError, match=f"the contents of --data {data}"):
        run_sft(sft_config(tiny_model_dir, data, output, resume=True))
    shutil.copy(example_files["demonstrations"], data)

    # extending the run and logging differently is the same run
    run_sft(sft_config(tiny_model_dir, data, output, resume=True, max_steps=4, log_every=2, save_every=5))
    assert steps_logged(output) == [1, 2, 4]


def test_fingerprints_tell_apart_contents_not_paths(tmp_path, tiny_model_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert fingerprint(str(copy)) == fingerprint(str(tiny_model_dir))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("}", ', "extra": 1}', 1))
    assert fingerprint(str(copy)) != fingerprint(str(tiny_model_dir))
    assert fingerprint("org/hub-model-id") is None


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, tiny_model_dir, example_files, monkeypatch, capsys):
    import rlhfkit.train.offline as offline

    real_train = offline.train

    def interrupted_train(config, accelerator, model, stage, on_step=None):
        def stop(step):
            if step == 2:
                raise KeyboardInterrupt
        return real_train(config, accelerator, model, stage, on_step=stop)

    monkeypatch.setattr("rlhfkit.train.sft.train", interrupted_train)
    output = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--model", str(tiny_model_dir), "--data", str(example_files["demonstrations"]), "--output",
              str(output), "--max-steps", "4", "--save-every", "1", "--batch-size", "4", "--max-length", "96",
              "--eval-split", "0", "--device", "cpu"])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2" in err and "--resume" in err and "Traceback" not in err
