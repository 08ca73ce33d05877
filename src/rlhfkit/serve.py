"""``rlhfkit serve``: an OpenAI-compatible chat server for a local HF model.

Endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions`` (``messages``, ``max_tokens``,
``temperature`` (0 = greedy), ``top_p``, ``n``, ``logprobs``, ``top_logprobs``; ``seed`` is accepted and
ignored, since requests share batches). Users chat with their policy through any OpenAI client, and
judges point at it.

Batching: requests wait in a queue; a single worker thread takes everything queued (up to
``--max-batch`` answers), groups it by sampling settings and samples each group in one batched call
to the sampling engine (``--engine``: rlhfkit's KV-cached HF decode loop, or vLLM). Log-probs, when
asked for, come from batched teacher-forced passes of the HF model over the group's prompts and
answers, as PPO takes them (at the sampling temperature, 1 for greedy), with the ``top_logprobs`` most
likely tokens at each position (capped at the vocabulary size, not at OpenAI's 20, so that a judge can
always see the labels it asks about); with vLLM sampling, the HF model is loaded for that on the first
request that asks for log-probs.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, Field

from rlhfkit.config import EngineConfig
from rlhfkit.data.chat import encode_prompt
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.rollout.sampler import HFSampler, SamplingSettings

# at most this many log-prob values ([answers, tokens, vocabulary]) per teacher-forced pass: 512 MiB in fp32
LOGPROB_ELEMENTS = 2**27


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (the OpenAI fields rlhfkit uses; others are ignored)."""

    model: str | None = None
    messages: list[dict[str, str]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=64)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    seed: int | None = None


@dataclass
class Job:
    """One chat-completion request waiting for the worker."""

    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    n: int
    top_logprobs: int | None  # None: no log-probs
    prompt_tokens: int = 0  # set by the worker
    done: threading.Event = field(default_factory=threading.Event)
    result: list[dict] | None = None
    error: Exception | None = None


class ChatEngine:
    """Owns the sampler; ``submit`` blocks until a batch containing the job has been generated.

    ``model`` is the HF model (for log-probs), or a function that loads it when first needed;
    ``context`` the most positions the model reads (None: unknown)."""

    def __init__(self, sampler, tokenizer, name: str, max_batch: int = 32, *, model, context: int | None):
        self.sampler, self.tokenizer, self.name, self.max_batch = sampler, tokenizer, name, max_batch
        self._model, self.context = model, context
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.requests = 0  # chat-completion requests served (tests read it)
        self.batches = 0
        threading.Thread(target=self._work, daemon=True, name="rlhfkit-serve").start()

    @property
    def model(self):
        """The HF model, loaded now if it was not yet."""
        if callable(self._model) and not isinstance(self._model, torch.nn.Module):
            self._model = self._model()
        return self._model.eval()

    def submit(self, job: Job) -> list[dict]:
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _work(self) -> None:
        while True:
            batch = [self.jobs.get()]
            answers = batch[0].n
            while answers < self.max_batch:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                batch.append(job)
                answers += job.n
            groups: dict[tuple, list[Job]] = {}
            for job in batch:
                groups.setdefault((job.temperature, job.top_p), []).append(job)
            for group in groups.values():
                try:
                    self._generate(group)
                except Exception as err:  # reported to each waiting request, never kills the worker
                    for job in group:
                        job.error = err
                for job in group:
                    job.done.set()
            self.batches += 1

    @torch.inference_mode()
    def _generate(self, jobs: list[Job]) -> None:
        first = jobs[0]
        prompt_ids = [encode_prompt(self.tokenizer, job.messages) for job in jobs]
        for job, ids in zip(jobs, prompt_ids, strict=True):
            job.prompt_tokens = len(ids)
        flat_prompts = [i for i, job in enumerate(jobs) for _ in range(job.n)]
        settings = SamplingSettings(max(job.max_tokens for job in jobs), first.temperature, first.top_p,
                                    self.max_batch)
        samples = self.sampler.sample([jobs[i].messages for i in flat_prompts], [prompt_ids[i] for i in flat_prompts],
                                      1, settings)
        stops = set(stop_token_ids(self.tokenizer))
        position = 0
        scored = []  # (choice, prompt ids, answer tokens, top) for the log-prob pass
        for index, job in enumerate(jobs):
            choices = []
            for k in range(job.n):
                [sample] = samples[position]
                position += 1
                tokens = sample.token_ids[: job.max_tokens]
                finished = bool(tokens) and tokens[-1] in stops
                choice = {"index": k, "message": {"role": "assistant",
                                                  "content": self.tokenizer.decode(tokens, skip_special_tokens=True)},
                          "finish_reason": "stop" if finished else "length", "logprobs": None,
                          "_tokens": len(tokens)}
                if job.top_logprobs is not None and tokens:
                    scored.append((choice, prompt_ids[index], tokens, job.top_logprobs))
                choices.append(choice)
            job.result = choices
        temperature = first.temperature if first.temperature > 0 else 1.0  # one sampling setting per group
        # answers per pass: the full-vocabulary log-probs of a pass stay under LOGPROB_ELEMENTS
        width = max((len(answer) for _, _, answer, _ in scored), default=1)
        per_pass = max(1, min(self.max_batch, LOGPROB_ELEMENTS // (width * len(self.tokenizer))))
        for start in range(0, len(scored), per_pass):
            part = scored[start : start + per_pass]
            contents = self._logprobs([p for _, p, _, _ in part], [a for _, _, a, _ in part], temperature,
                                      [top for *_, top in part])
            for (choice, *_), content in zip(part, contents, strict=True):
                choice["logprobs"] = {"content": content}

    def _logprobs(self, prompts: list[list[int]], answers: list[list[int]], temperature: float,
                  tops: list[int]) -> list[list[dict]]:
        """Per answer token: its log-prob and the ``tops[i]`` most likely tokens, for the answers
        ``answers[i]`` to ``prompts[i]``, from one teacher-forced forward pass over all of them."""
        from rlhfkit.rollout.logprobs import answer_logits, answer_rollout

        rollout = answer_rollout(prompts, answers, self.tokenizer, next(self.model.parameters()).device)
        logprobs = torch.log_softmax(answer_logits(self.model, rollout).float() / temperature, dim=-1)
        chosen = logprobs.gather(-1, rollout.response.unsqueeze(-1)).squeeze(-1).tolist()
        most = max(0, min(max(tops), logprobs.shape[-1]))
        best = logprobs.topk(most, dim=-1) if most else None
        values, indices = (best.values.tolist(), best.indices.tolist()) if best is not None else (None, None)
        # each token id shown is decoded once, in one call (a judge asks for the whole vocabulary)
        shown = {token for answer in answers for token in answer}
        if indices is not None:
            shown.update(i for row in indices for position in row for i in position)
        ids = sorted(shown)
        text = dict(zip(ids, self.tokenizer.batch_decode([[i] for i in ids]), strict=True))
        contents = []
        for row, (answer, top) in enumerate(zip(answers, tops, strict=True)):
            content = []
            for t, token in enumerate(answer):
                likely = [] if values is None else [
                    {"token": text[i], "logprob": v}
                    for v, i in zip(values[row][t][:top], indices[row][t][:top], strict=True)]
                content.append({"token": text[token], "logprob": chosen[row][t], "top_logprobs": likely})
            contents.append(content)
        return contents


ROLES = ("system", "user", "assistant")


def checked_request(engine: ChatEngine, request: ChatRequest) -> tuple[list[dict], int]:
    """The request's messages and answer length, or a ``ValueError`` saying what is wrong with them: roles
    other than system, user and assistant, no user message, or a prompt and answer longer than the model reads."""
    for index, message in enumerate(request.messages):
        if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{index}]: expected a 'role' of {', '.join(ROLES)} and a string 'content', "
                             f"got role {message.get('role')!r}")
    if not any(m["role"] == "user" for m in request.messages):
        raise ValueError("messages: expected at least one message with role 'user'")
    messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
    max_tokens = request.max_completion_tokens or request.max_tokens or 256
    limit = engine.context
    if limit is not None:
        prompt = len(encode_prompt(engine.tokenizer, messages))
        if prompt >= limit:
            raise ValueError(f"messages: the prompt is {prompt} tokens; {engine.name} reads at most {limit}")
        if prompt + max_tokens > limit:
            if request.max_tokens is None and request.max_completion_tokens is None:
                max_tokens = limit - prompt  # the default length, cut to what fits
            else:
                raise ValueError(f"max_tokens {max_tokens}: the prompt is {prompt} tokens and {engine.name} reads "
                                 f"at most {limit}, so at most {limit - prompt} answer tokens fit")
    return messages, max_tokens


def create_app(engine: ChatEngine):
    """The FastAPI app serving ``engine``."""
    from fastapi import FastAPI, HTTPException
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    app = FastAPI(title="rlhfkit serve")
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, error: RequestValidationError) -> JSONResponse:
        # the fields and what they expect, without echoing the values (a NaN cannot be written as JSON)
        problems = ["/".join(map(str, e["loc"][1:])) + ": " + e["msg"] for e in error.errors()]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "rlhfkit"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict:
        try:
            messages, max_tokens = checked_request(engine, request)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        job = Job(messages, max_tokens, request.temperature, request.top_p, request.n,
                  (request.top_logprobs or 0) if request.logprobs else None)
        engine.requests += 1
        choices = await run_in_threadpool(engine.submit, job)
        completion_tokens = sum(c.pop("_tokens") for c in choices)
        prompt_tokens = job.prompt_tokens
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": engine.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def load_engine(model: str, device: str = "auto", dtype: str = "auto", max_batch: int = 32,
                name: str | None = None, engine: EngineConfig | None = None) -> ChatEngine:
    """The chat engine of the model folder (or hub id) ``model``, sampling with ``engine.engine``."""
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from rlhfkit.models.loading import position_limit
    from rlhfkit.rollout.engines import resolve_engine, start_vllm

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(model)

    def load_model():
        return load_causal_lm(model, tokenizer, dtype=torch_dtype, device=torch_device)

    engine = engine or EngineConfig(engine="hf")
    if resolve_engine(engine.engine, torch_device) == "vllm":
        sampler = start_vllm(engine, model, tokenizer, torch_dtype, 0, beside_trainer=False)
        return ChatEngine(sampler, tokenizer, name or model, max_batch, model=load_model,
                          context=engine.engine_max_model_len or position_limit(model))
    policy = load_model()
    return ChatEngine(HFSampler(policy, tokenizer), tokenizer, name or model, max_batch, model=policy,
                      context=position_limit(model))


def run_serve(config) -> None:
    """Serve ``config.model`` until interrupted."""
    import uvicorn

    from rlhfkit.console import console

    engine = load_engine(config.model, config.device, config.dtype, config.max_batch, config.name, config)
    console.print(f"serve: {engine.name} at http://{config.host}:{config.port}/v1 (OpenAI-compatible chat completions)")
    uvicorn.run(create_app(engine), host=config.host, port=config.port, log_level="warning")
