"""Several stop tokens: a chat model trained to end answers with its template's end-of-turn token may
still end one with the EOS its tokenizer came with. Every sampler (the HF engine, ``serve``, vLLM)
stops there too, keeps that token as the answer's last and calls the answer finished; training
appends and trains the end-of-turn token only; a saved folder's generation config lists every stop id.

The model here is built by hand so that its answer to any prompt is ``o``, ``k``, then the
tokenizer's original EOS: its layers add nothing to the residual stream (their output projections
are zero), so the logits depend on the current token only, and the embeddings and output matrix
make a bigram table: any token -> ``o`` -> ``k`` -> original EOS, with a margin of 80 in logits.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from rlhfkit.data.chat import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, encode_prompt, tokenize_prompt_response
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.models import load_causal_lm, load_tokenizer, save_model
from rlhfkit.models.tiny import tiny_config, train_tokenizer
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.rollout.vllm_engine import vllm_available

pytestmark = pytest.mark.usefixtures("one_thread")

END = "<|end|>"  # the template's end of an assistant turn: the training EOS
PROMPTS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What colour is snow?"}]]


@pytest.fixture(scope="module")
def stop_model_dir(example_files, tmp_path_factory):
    """A saved folder: a tokenizer whose EOS is ``<|endoftext|>`` and whose template ends assistant turns
    with ``<|end|>``, and a tiny Llama (head size 32, as vLLM's CPU attention needs) that answers
    ``ok<|endoftext|>`` to everything."""
    tokenizer = train_tokenizer(example_files["corpus"].read_text().splitlines(), vocab_size=512)
    tokenizer.add_special_tokens({"additional_special_tokens": [END]})
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE.replace("{{ eos_token }}", "{{ '" + END + "' }}")
    config = tiny_config("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, layers=1,
                         width=64, heads=2, tie_word_embeddings=False)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    o, k, stop = tokenizer.convert_tokens_to_ids(["o", "k", tokenizer.eos_token])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings, output = model.model.embed_tokens.weight, model.lm_head.weight
        embeddings.zero_()
        embeddings[:, 0] = 1.0  # after the final RMSNorm: 8 in one dimension (sqrt of the width)
        embeddings[o, 0], embeddings[o, 1] = 0.0, 1.0
        embeddings[k, 0], embeddings[k, 2] = 0.0, 1.0
        output.zero_()
        output[o, 0], output[k, 1], output[stop, 2] = 10.0, 10.0, 10.0
    folder = tmp_path_factory.mktemp("stop-tokens")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def answer_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids(["o", "k", "<|endoftext|>"])


def test_the_stop_ids_are_the_training_eos_then_the_original_one_and_only_the_first_is_trained(stop_model_dir):
    tokenizer = load_tokenizer(str(stop_model_dir))
    end, original = tokenizer.convert_tokens_to_ids([END, "<|endoftext|>"])
    assert tokenizer.eos_token == END and stop_token_ids(tokenizer) == [end, original]
    assert stop_token_ids(pickle.loads(pickle.dumps(tokenizer))) == [end, original]  # into a Ray actor
    example = tokenize_prompt_response(tokenizer, PROMPTS[0], "ok", max_length=64)
    prompt = encode_prompt(tokenizer, PROMPTS[0])
    assert example.input_ids[len(prompt):] == [*tokenizer.encode("ok", add_special_tokens=False), end]
    assert example.labels[-1] == end and original not in example.input_ids
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_the_hf_engine_stops_at_the_original_eos_and_calls_the_answer_finished(stop_model_dir, monkeypatch):
    import rlhfkit.rollout.generate as generate
    from rlhfkit.rollout.logprobs import answer_rollout, response_logprobs, rollout_from_samples

    tokenizer = load_tokenizer(str(stop_model_dir))
    model = load_causal_lm(str(stop_model_dir), tokenizer)
    expected = answer_ids(tokenizer)

    def answers(temperature):
        samples = sample_responses(model, tokenizer, PROMPTS, num_samples=2, temperature=temperature, max_new_tokens=8,
                                   show_progress=False)
        return [s for per_prompt in samples for s in per_prompt]

    for temperature in (0.0, 1.0):
        for sample in answers(temperature):
            assert sample.token_ids == expected and sample.finished and sample.text == "ok"
    with monkeypatch.context() as patch:  # HF generate decodes instead of rlhfkit's loop
        patch.setattr(generate, "decoding_processors", lambda *args: None)
        assert all(s.token_ids == expected and s.finished for s in answers(0.0))
    # the control: stopping at the training EOS alone, the answer runs on to the token limit
    with monkeypatch.context() as patch:
        patch.setattr(generate, "stop_token_ids", lambda tok: [tok.eos_token_id])
        [runaway, *_] = answers(0.0)
    assert runaway.token_ids == (expected * 3)[:8] and not runaway.finished

    # the stop token is an answer token like the EOS: in the mask, with its log-prob, finished
    samples = sample_responses(model, tokenizer, PROMPTS, temperature=0, max_new_tokens=8, show_progress=False)
    prompt_ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    rollout = rollout_from_samples(samples, PROMPTS, prompt_ids, tokenizer.pad_token_id, torch.device("cpu"))
    assert rollout.mask.tolist() == [[1.0] * 3] * 2 and rollout.finished.all()
    with torch.no_grad():
        logprobs = response_logprobs(model, rollout, 1.0)[0]
    assert (logprobs > -1e-3).all()  # the bigram table's margin: each token has probability ~1
    rebuilt = answer_rollout(prompt_ids, [s[0].token_ids for s in samples], tokenizer, torch.device("cpu"))
    assert rebuilt.finished.all() and not answer_rollout(prompt_ids, [expected[:2]] * 2, tokenizer,
                                                         torch.device("cpu")).finished.any()


def test_serve_reports_stop_for_an_answer_ended_by_the_original_eos(stop_model_dir):
    from rlhfkit.serve import Job, load_engine

    engine = load_engine(str(stop_model_dir), device="cpu", name="stops")
    [choice] = engine.submit(Job(PROMPTS[0], max_tokens=8, temperature=0.0, top_p=1.0, n=1, top_logprobs=None))
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == "ok" and choice["_tokens"] == 3


def test_a_saved_folder_lists_every_stop_id_in_its_generation_config(stop_model_dir, tmp_path):
    tokenizer = load_tokenizer(str(stop_model_dir))
    stops = stop_token_ids(tokenizer)
    save_model(load_causal_lm(str(stop_model_dir), tokenizer), tokenizer, tmp_path)
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == stops
    # the saved tokenizer's EOS is the end of turn; the original EOS comes back from the generation config
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.eos_token == END and stop_token_ids(reloaded) == stops


@pytest.mark.slow
@pytest.mark.skipif(not vllm_available() and not os.environ.get("RLHFKIT_REQUIRE_VLLM"),
                    reason="vLLM is not installed (make install-vllm)")
def test_the_vllm_engine_stops_at_the_original_eos_and_calls_the_answer_finished(stop_model_dir, monkeypatch):
    from rlhfkit.rollout.sampler import SamplingSettings
    from rlhfkit.rollout.vllm_engine import VLLMSampler

    # the engine in a process of its own: an in-process engine on this model left vLLM's process-wide state
    # unusable for the in-process engines of tests/test_vllm.py that run after it in the suite
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")

    tokenizer = load_tokenizer(str(stop_model_dir))
    prompt_ids = [encode_prompt(tokenizer, p) for p in PROMPTS]
    sampler = VLLMSampler(stop_model_dir, tokenizer, max_model_len=256)
    try:
        for temperature in (0.0, 1.0):
            settings = SamplingSettings(max_new_tokens=8, temperature=temperature, seed=3)
            for per_prompt in sampler.sample(PROMPTS, prompt_ids, 2, settings):
                for sample in per_prompt:
                    assert sample.token_ids == answer_ids(tokenizer) and sample.finished and sample.text == "ok"
                    assert len(sample.logprobs) == 3 and min(sample.logprobs) > -1e-3
    finally:
        sampler.close()
