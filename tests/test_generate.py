"""Generation: K samples per prompt, cut after the first EOS, left padding changes nothing."""

import json

import pytest
import torch

from rlhfkit.config import GenerateConfig
from rlhfkit.data.chat import pad_batch
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.rollout.generate import cut_after_eos, sample_responses
from rlhfkit.rollout.generate_command import run_generate


def test_cut_after_eos():
    assert cut_after_eos([5, 6, 0, 7, 0], [0]) == ([5, 6, 0], True)
    assert cut_after_eos([5, 6, 7], [0]) == ([5, 6, 7], False)
    # several stop tokens: cut after the first of any of them, which stays the answer's last token
    assert cut_after_eos([5, 9, 6, 0], [0, 9]) == ([5, 9], True)
    assert cut_after_eos([5, 6, 0, 9], [9, 0]) == ([5, 6, 0], True)


def test_pad_batch_both_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_token_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_token_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batched_greedy_equals_one_at_a_time(tiny_model_dir):
    """Prompts of different lengths in one left-padded batch decode exactly as they do alone."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), tokenizer)
    prompts = ["Hi", [{"role": "user", "content": "What is the capital of Peru? Please answer briefly."}],
               "What colour is snow?"]
    batched = sample_responses(model, tokenizer, prompts, temperature=0, max_new_tokens=12, batch_size=8,
                               show_progress=False)
    for prompt, samples in zip(prompts, batched, strict=True):
        [[alone]] = sample_responses(model, tokenizer, [prompt], temperature=0, max_new_tokens=12,
                                     show_progress=False)
        assert samples[0].token_ids == alone.token_ids


def test_samples_stop_at_eos(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), tokenizer)
    bias = torch.zeros(len(tokenizer))  # make EOS by far the most likely next token everywhere
    bias[tokenizer.eos_token_id] = 100.0
    original_forward = model.forward

    def forward(*args, **kwargs):
        out = original_forward(*args, **kwargs)
        out.logits = out.logits + bias
        return out

    model.forward = forward
    [[sample]] = sample_responses(model, tokenizer, ["Hi"], temperature=1.0, max_new_tokens=8, show_progress=False)
    assert sample.token_ids == [tokenizer.eos_token_id] and sample.finished and sample.text == ""


def test_generate_writes_k_responses_per_prompt(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    records = [{"prompt": "Hello"}, {"prompt": [{"role": "user", "content": "What colour is coal?"}]}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    output = tmp_path / "out" / "samples.jsonl"
    run_generate(GenerateConfig(model=str(tiny_model_dir), prompts=str(prompts), output=str(output),
                                num_samples=3, max_new_tokens=6, device="cpu"))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == [r["prompt"] for r in records]
    assert all(len(row["responses"]) == 3 and all(isinstance(t, str) for t in row["responses"]) for row in rows)


def test_prompts_read_once_give_the_same_samples(tiny_llama_dir, monkeypatch):
    """K answers per prompt with each prompt read once (and the cache written in place) sample exactly
    the tokens that reading every row's prompt itself gives, greedy and seeded."""
    import rlhfkit.rollout.generate as generate

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = load_causal_lm(str(tiny_llama_dir), tokenizer)
    prompts = ["Hi", "What is the capital of Peru? Please answer briefly.", "What colour is snow?"]
    rows_read = []
    handle = model.register_forward_pre_hook(lambda _m, _args, kwargs: rows_read.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)

    def sample(temperature: float):
        torch.manual_seed(3)
        # batch 5 with K=3: a prompt's answers fall in two batches, and the cache must still be right
        samples = sample_responses(model, tokenizer, prompts, num_samples=3, temperature=temperature,
                                   max_new_tokens=10, batch_size=5, show_progress=False)
        return [[s.token_ids for s in per_prompt] for per_prompt in samples]

    shared = [sample(0), sample(1.0)]
    first_pass = rows_read[0]
    prefill = generate.prefill_prompts

    def prefill_every_row(model, prompt_of_row, encoded, *args, **kwargs):  # each row its own copy of its prompt
        return prefill(model, list(range(len(prompt_of_row))), [encoded[i] for i in prompt_of_row], *args, **kwargs)

    monkeypatch.setattr(generate, "prefill_prompts", prefill_every_row)
    rows_read.clear()
    assert shared == [sample(0), sample(1.0)]
    handle.remove()
    assert first_pass[0] == 2  # the first batch of 5 rows holds 2 distinct prompts: 2 rows read
    assert rows_read[0][0] == 5
    assert len({tuple(answer) for answer in shared[1][1]}) > 1  # sampling: different answers to one prompt


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_model_dir"])
def test_decode_loop_equals_generate(fixture, request, monkeypatch):
    """rlhfkit's decode loop picks exactly the tokens of HF ``generate`` (greedy), honours the generation
    config's suppressed tokens and top-p, and leaves settings it does not apply to ``generate``."""
    import rlhfkit.rollout.generate as generate

    model_dir = request.getfixturevalue(fixture)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer)
    prompts = ["Hi there", "What is the capital of Peru? Please answer briefly.", "What colour is snow?"]
    decoded, decode = [], generate.decode
    monkeypatch.setattr(generate, "decode", lambda *args, **kwargs: decoded.append(1) or decode(*args, **kwargs))

    def greedy(**kwargs):
        decoded.clear()
        samples = sample_responses(model, tokenizer, prompts, num_samples=2, temperature=0, max_new_tokens=12,
                                   batch_size=4, show_progress=False, **kwargs)
        return [[s.token_ids for s in per_prompt] for per_prompt in samples], bool(decoded)

    ours, used_loop = greedy()
    assert used_loop
    with monkeypatch.context() as patch:
        patch.setattr(generate, "decoding_processors", lambda *args: None)  # generate decodes
        theirs, used_loop = greedy()
    assert ours == theirs and not used_loop

    # top-p that keeps only the likeliest token, or a temperature near 0: sampling is greedy decoding
    for temperature, top_p in ((1.0, 1e-6), (1e-4, 1.0)):
        torch.manual_seed(0)
        sampled = sample_responses(model, tokenizer, prompts, num_samples=2, temperature=temperature, top_p=top_p,
                                   max_new_tokens=12, batch_size=4, show_progress=False)
        assert [[s.token_ids for s in per_prompt] for per_prompt in sampled] == ours

    first_tokens = {answers[0][0] for answers in ours}
    model.generation_config.suppress_tokens = sorted(first_tokens)
    suppressed, used_loop = greedy()
    assert used_loop and not first_tokens & {answers[0][0] for answers in suppressed}

    model.generation_config.suppress_tokens = None
    forward = model.forward

    def eos_after_some_tokens(*args, **kwargs):  # answers end at different steps in different rows
        out = forward(*args, **kwargs)
        out.logits[:, -1, tokenizer.eos_token_id] += 100.0 * (kwargs["input_ids"][:, -1] % 4 == 0)
        return out

    model.forward = eos_after_some_tokens
    ended, used_loop = greedy()
    with monkeypatch.context() as patch:
        patch.setattr(generate, "decoding_processors", lambda *args: None)
        assert greedy() == (ended, False)
    lengths = [len(answer) for answers in ended for answer in answers]
    assert used_loop and min(lengths) < 12 and len(set(lengths)) > 1
    model.forward = forward

    model.generation_config.repetition_penalty = 5.0  # not applied by the loop: generate decodes
    penalised, used_loop = greedy()
    assert not used_loop and penalised != ours


def test_sample_tokens_inverts_the_cumulative_distribution():
    from rlhfkit.rollout.generate import sample_tokens

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    scores = probs.log().expand(6, 4)  # log 0 = -inf: a suppressed token
    uniform = torch.tensor([0.0, 0.05, 0.1, 0.69, 0.71, 0.9999999])
    # cumulative 0.1, 0.1, 0.7, 1.0: the first entry above each number; token 1 (probability 0) never
    assert sample_tokens(scores, uniform).tolist() == [0, 0, 2, 2, 3, 3]
    torch.manual_seed(0)
    drawn = sample_tokens(probs.log().expand(40_000, 4))
    frequencies = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert torch.allclose(frequencies, probs, atol=0.01) and frequencies[1] == 0


def test_preallocated_cache_layer_writes_in_place_and_grows():
    from rlhfkit.rollout.generate import PreallocatedLayer

    keys, values = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    layer = PreallocatedLayer(keys, values, capacity=4)
    more = torch.randn(2, 1, 1, 4)
    all_keys, _ = layer.update(more, more)
    assert torch.equal(all_keys, torch.cat([keys, more], dim=-2)) and layer.get_seq_length() == 4
    all_keys, all_values = layer.update(more, 2 * more)  # past the reserved room
    assert all_keys.shape[-2] == 5 and torch.equal(all_values[..., -1:, :], 2 * more)
