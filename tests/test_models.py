"""Model loading: pad token distinct from EOS, chat template, dropout off, LoRA, tiny-model folders."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.data.chat import DEFAULT_CHAT_TEMPLATE
from rlhfkit.models import LoraSettings, load_causal_lm, load_tokenizer, save_model
from rlhfkit.models.loading import PAD_TOKEN, resolve_dtype


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_tiny_model_is_a_plain_hf_folder(fixture, request):
    folder = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    ids = tokenizer("What is the capital of France?", return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == "What is the capital of France?"  # byte-level: lossless
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_pad_token_added_when_it_equals_eos(tmp_path, tiny_model_dir):
    """GPT-2 style tokenizers use EOS as pad; masking pads would then mask EOS (ARCHITECTURE.md rule 1)."""
    folder = tmp_path / "pad-is-eos"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config.get("pad_token") == config.get("eos_token")

    loaded = load_tokenizer(str(folder))
    assert loaded.pad_token == PAD_TOKEN and loaded.pad_token_id != loaded.eos_token_id
    assert loaded.chat_template == DEFAULT_CHAT_TEMPLATE
    model = load_causal_lm(str(folder), loaded)
    assert model.get_input_embeddings().num_embeddings >= len(loaded)
    assert model.config.pad_token_id == loaded.pad_token_id


def test_own_chat_template_is_kept(tmp_path, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).chat_template.startswith("{% for m in messages %}[")


def test_lora_trains_adapters_only_and_saves_a_merged_plain_model(tmp_path, tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = load_causal_lm(str(tiny_llama_dir), tokenizer, lora=LoraSettings(r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # move the adapters away from their zero initialisation so merging matters
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = tokenizer("The capital of Peru is Lima.", return_tensors="pt")["input_ids"]
    expected = model(ids).logits
    save_model(model, tokenizer, tmp_path / "merged")
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in plain.named_parameters())
    assert torch.allclose(plain(ids).logits, expected, atol=1e-5)


def test_dtype_selection():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_every_loader_turns_dropout_off(tmp_path, tiny_model_dir):
    """ARCHITECTURE.md rule 7: a checkpoint saved with dropout loads with dropout 0 as policy, reward model and critic."""
    from rlhfkit.models.reward import RewardModel, load_reward_backbone

    folder = tmp_path / "with-dropout"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]  # the checkpoint has some

    def dropouts(module):
        return [m.p for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]

    tokenizer = load_tokenizer(str(folder))
    assert dropouts(load_causal_lm(str(folder), tokenizer)) == []
    backbone = load_reward_backbone(str(folder), tokenizer)  # reward model to train, and PPO's critic
    assert dropouts(backbone) == []
    backbone.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    assert dropouts(RewardModel.from_pretrained(str(tmp_path / "rm"), device="cpu").model) == []
