"""PPO driven by the caller: ``generate(queries)`` then ``step(queries, responses, rewards)``, the
low-level API many RLHF scripts are written against::

    ppo_trainer = PPOTrainer(PPOConfig(batch_size=32), model, tokenizer)
    for epoch in range(10):
        queries = ["Explain RLHF in simple terms."] * 32
        responses = ppo_trainer.generate(queries)
        rewards = [reward_model(response) for response in responses]
        stats = ppo_trainer.step(queries, responses, rewards)

``step`` runs one PPO update on that batch through the same experience path, optimizer, schedule,
metrics, checkpoints (``save_steps``, ``resume_from_checkpoint``) and accelerate state as
``train()`` (the loop's public steps: ``start_training``, ``optimizer_step``, ``end_step``); under
several processes every process calls it with its own batch.

Inputs:

- queries: strings, message lists (rendered by the chat template) or token ids (a list of
  ints or a 1-D tensor).
- responses: strings or token ids. A string that :meth:`StepAPI.generate` returned for that
  query maps back to the exact tokens sampled, EOS included; any other string is tokenized and
  gets EOS appended (as completions in training data do), so it counts as finished.
- rewards: a number or a 0-d (one-element) tensor per response, the score of the whole
  response, placed on its last token; or a list / 1-D tensor with one reward per response token.

Everything else is refused with a message naming the sample and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Mapping, Sequence

import torch
from transformers import get_scheduler

from posttrain.algorithms.experience import Samples
from posttrain.config import TrainConfig
from posttrain.data.prompts import encode_prompt, end_of_turn_ids
from posttrain.errors import ConfigError
from posttrain.rollout import Completion
from posttrain.rollout.generation import stop_token_ids
from posttrain.train.loop import TrainingRun
from posttrain.train.metrics import MetricAccumulator

# Keyword names generate() maps to SamplingOptions fields (TRL users pass transformers' names).
_OPTION_ALIASES = {"max_new_tokens": "max_completion_length"}


def split_positional(args: tuple, kwargs: dict) -> tuple:
    """``(model, config, kwargs)`` from TRL's ``(config, model, tokenizer)`` or the trainers'
    ``(model, config)`` positional forms (keywords as given)."""
    if args and isinstance(args[0], TrainConfig):
        if len(args) > 3:
            raise TypeError(f"PPOTrainer(config, model, tokenizer) takes 3 positional arguments, got {len(args)}")
        config, model, tokenizer = (*args, None, None)[:3]
        if isinstance(tokenizer, torch.nn.Module):
            raise TypeError(
                "PPOTrainer(config, model, tokenizer): the third argument is a model, not a tokenizer. A reference "
                "model goes in config.ref_model (default: a frozen copy of the policy)"
            )
        if tokenizer is not None:
            _set_once(kwargs, "tokenizer", tokenizer)
    elif len(args) > 2:
        raise TypeError("PPOTrainer(model, config) takes 2 positional arguments; TRL's form puts the config first: PPOTrainer(config, model, tokenizer)")
    else:
        model, config = (*args, None, None)[:2]
    if model is not None:
        _set_once(kwargs, "model", model)
    if config is not None:
        _set_once(kwargs, "config", config)
    return kwargs.pop("model", None), kwargs.pop("config", None), kwargs


def _set_once(kwargs: dict, name: str, value) -> None:
    if name in kwargs:
        raise TypeError(f"PPOTrainer got {name} both positionally and as {name}=")
    kwargs[name] = value


class _Both:
    """A metric sink feeding the run's accumulator (logged at ``logging_steps``) and the one
    whose totals :meth:`StepAPI.step` returns."""

    def __init__(self, *accumulators: MetricAccumulator):
        self.accumulators = accumulators

    def update(self, metrics) -> None:
        for accumulator in self.accumulators:
            accumulator.update(metrics)


class StepAPI:
    """``generate`` / ``step`` for :class:`~posttrain.algorithms.ppo.PPOTrainer` (``save_model`` is
    every trainer's), and what a run of unknown length without prompt data needs
    (``needs_train_data`` False)."""

    needs_train_data = False
    _run: TrainingRun | None = None

    # ------------------------------------------------------------------ a run without prompt data

    def train(self):
        if self.train_source is None:
            raise ConfigError(
                "train() needs prompt rows: pass train_dataset=[{'prompt': ...}, ...] (or set train_data). "
                "To drive PPO yourself, call generate() and step() instead"
            )
        return super().train()

    def build_lr_scheduler(self, optimizer, total_steps: int):
        if total_steps > 0:
            return super().build_lr_scheduler(optimizer, total_steps)
        if self.config.warmup_ratio > 0 and self.config.warmup_steps == 0:
            self.reporter.print("[yellow]step() without max_steps has no known length: warmup_ratio is ignored (use warmup_steps)[/]")
        return get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=self.config.warmup_steps)

    # ------------------------------------------------------------------ generate

    def generate(self, queries, *, return_ids: bool = False, **options):
        """Sample one response per query from the current policy.

        ``queries``: a list of strings, message lists or token-id lists (one query alone is
        answered alone). ``options``: any sampling option of the config for this call
        (``max_completion_length`` or ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
        ``do_sample``, ``stop_strings``, ...); other keywords go to transformers' ``generate``.
        Returns strings (special tokens skipped), or token-id lists with ``return_ids=True``
        (the stop token included)."""
        if getattr(self, "module", None) is None:  # after train() the trained module generates
            self._step_run()
        single = _is_single_query(queries)
        batch = [queries] if single else _as_list(queries, "queries")
        prompt_ids = [self._query_ids(query, index) for index, query in enumerate(batch)]
        # replies to message lists also stop at the chat template's end-of-turn token
        self._conversational = any(isinstance(query, list) and not _is_ids(query) for query in batch)
        completions = self.sample_completions(prompt_ids, self._call_options(options), 1)
        for ids, completion in zip(prompt_ids, completions):
            self._generated[(tuple(ids), completion.text)] = completion
        out = [list(c.token_ids) if return_ids else c.text for c in completions]
        return out[0] if single else out

    def _call_options(self, options: dict):
        if not options:
            return self.sampling_options()
        fields = {f.name for f in dataclasses.fields(self.sampling_options())}
        base = self.sampling_options()
        chosen, extra = {}, dict(base.generation_kwargs)
        for key, value in options.items():
            key = _OPTION_ALIASES.get(key, key)
            (chosen if key in fields else extra)[key] = value
        return dataclasses.replace(base, generation_kwargs=extra, **chosen)

    # ------------------------------------------------------------------ step

    def step(self, queries, responses, rewards) -> dict[str, float]:
        """One PPO update on this batch (``batch_size`` samples): reference and value passes,
        KL-penalised rewards, GAE, ``ppo_epochs`` over mini-batches. Returns the stats of its
        optimizer steps (the same names ``train()`` logs). Every ``logging_steps``-th call logs
        one line at its last optimizer step with the metrics of the calls since the last line
        (``logging_steps`` counts calls here, not optimizer steps)."""
        run = self._step_run()
        state = run.state
        if 0 < state.total_steps <= state.step:
            raise RuntimeError(f"this run was set up for max_steps={state.total_steps} optimizer steps and they are done")
        self.prepare_experience(self._step_samples(queries, responses, rewards), state)
        returned = MetricAccumulator()
        sink = _Both(run.metrics, returned)
        run.module.train()
        while (window := self.take_window()) is not None:
            self.optimizer_step(run, window, sink)
            self.end_step(run, scheduled_log=False)
        self._calls += 1
        # (nothing to log when a callback had every step logged already)
        if self.config.logging_steps and self._calls % self.config.logging_steps == 0 and run.metrics:
            self.log_metrics(run)
            run.last_log = (time.perf_counter(), state.tokens_seen)
        self._generated.clear()
        stats = returned.compute(self.accelerator)
        stats["learning_rate"] = run.scheduler.get_last_lr()[0]
        stats["step"] = float(state.step)
        return stats

    def _step_run(self) -> TrainingRun:
        """The run ``step`` drives: optimizer, schedule and accelerate state set up once, as
        ``train()`` does."""
        if self._run is None:
            if getattr(self, "module", None) is not None:
                raise RuntimeError("step() and generate() drive their own run; this trainer already ran train(). Build a new PPOTrainer for step()")
            self._generated = {}  # (prompt ids, text) -> Completion of generate(), for step()
            self._calls = 0  # step() calls so far (logging_steps counts them)
            self._run = self.start_training(None)
            self._run.last_log = (time.perf_counter(), self.state.tokens_seen)
        return self._run

    def _step_samples(self, queries, responses, rewards) -> Samples:
        """Checked, normalised inputs as :class:`~posttrain.algorithms.experience.Samples`:
        items ``{prompt, prompt_ids}``, completions and one reward per completion token."""
        queries = _as_list(queries, "queries")
        responses = _as_list(responses, "responses")
        rewards = _as_list(rewards, "rewards")
        if not len(queries) == len(responses) == len(rewards):
            raise ValueError(
                f"step() got {len(queries)} queries, {len(responses)} responses and {len(rewards)} rewards; "
                "give one response and one reward per query"
            )
        if len(queries) != self.config.batch_size:
            raise ValueError(
                f"step() got {len(queries)} samples but the config has batch_size={self.config.batch_size}. "
                f"Fix: pass {self.config.batch_size} samples per step, or set PPOConfig(batch_size={len(queries)})"
            )
        items, completions, token_rewards = [], [], []
        for index, (query, response, reward) in enumerate(zip(queries, responses, rewards)):
            prompt_ids = self._query_ids(query, index)
            completion = self._response(prompt_ids, response, index)
            items.append({"prompt": query if not _is_ids(query) else self.tokenizer.decode(prompt_ids), "prompt_ids": prompt_ids})
            completions.append(completion)
            token_rewards.append(per_token_rewards(reward, len(completion.token_ids), index))
        return Samples(items, completions, token_rewards)

    def _query_ids(self, query, index: int) -> list[int]:
        if _is_ids(query):
            ids = self._checked_ids(query, f"query {index}")
        elif isinstance(query, str) or (isinstance(query, list) and all(isinstance(m, Mapping) for m in query)):
            if isinstance(query, str) and not query:
                raise ValueError(f"query {index} is an empty string; a prompt needs at least one token")
            ids = encode_prompt(self.tokenizer, query, self.config.chat_template_kwargs, index)
        else:
            raise TypeError(f"query {index}: expected a string, a list of messages or token ids, got {type(query).__name__}: {query!r:.100}")
        limit = self.config.max_prompt_length
        if limit and len(ids) > limit:
            self.reporter.print(f"[yellow]query {index}: {len(ids)} tokens, shortened to its last {limit} (max_prompt_length)[/]")
            ids = ids[-limit:]
        return ids

    def _response(self, prompt_ids: list[int], response, index: int):
        if isinstance(response, str):
            generated = self._generated.get((tuple(prompt_ids), response))
            if generated is not None:
                return generated
            if not response:
                raise ValueError(f"response {index} is empty; PPO needs at least one response token. Fix: drop the sample, or pass token ids")
            ids = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            return Completion(ids, response, "eos")
        if not _is_ids(response):
            raise TypeError(f"response {index}: expected a string or token ids, got {type(response).__name__}: {response!r:.100}")
        ids = self._checked_ids(response, f"response {index}")
        extra = [*self.config.stop_token_ids, *end_of_turn_ids(self.tokenizer)]
        stops = set(stop_token_ids(self.tokenizer, self.unwrapped_model(), extra))
        reason = "eos" if ids[-1] in stops else "length"
        return Completion(ids, self.tokenizer.decode(ids, skip_special_tokens=True), reason)

    def _checked_ids(self, value, what: str) -> list[int]:
        ids = value.tolist() if isinstance(value, torch.Tensor) else list(value)
        if not ids:
            raise ValueError(f"{what} is empty; it needs at least one token")
        vocabulary = self.unwrapped_model().get_input_embeddings().num_embeddings
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocabulary]
        if bad:
            raise ValueError(f"{what}: token ids must be integers in [0, {vocabulary}), got {bad[:5]}")
        return ids


def _as_list(value, name: str) -> list:
    if isinstance(value, (str, bytes, Mapping)) or isinstance(value, torch.Tensor) and value.dim() != 1 or not isinstance(value, (Sequence, torch.Tensor)):
        raise TypeError(f"step()/generate(): {name} must be a list with one entry per sample, got {type(value).__name__}")
    return list(value)


def _is_ids(value) -> bool:
    """A token-id sequence: a 1-D integer tensor, or a list/tuple of ints (possibly empty)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 1 and not value.is_floating_point()
    return isinstance(value, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _is_single_query(queries) -> bool:
    if isinstance(queries, str) or (isinstance(queries, torch.Tensor) and queries.dim() == 1):
        return True
    return isinstance(queries, list) and bool(queries) and (all(isinstance(m, Mapping) for m in queries) or _is_ids(queries))


def per_token_rewards(reward, num_tokens: int, index: int) -> list[float]:
    """One reward per response token: a scalar (number, 0-d or one-element tensor) on the last
    token, or ``num_tokens`` per-token values (a list or 1-D tensor)."""
    if isinstance(reward, torch.Tensor):
        reward = reward.detach().cpu()
        reward = reward.item() if reward.numel() == 1 and reward.dim() <= 1 else reward.tolist() if reward.dim() == 1 else reward
    elif type(reward).__module__ == "numpy" and hasattr(reward, "tolist"):
        reward = reward.tolist()
    if isinstance(reward, numbers.Real) and not isinstance(reward, bool):
        values = [0.0] * (num_tokens - 1) + [float(reward)]
    elif isinstance(reward, (list, tuple)) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in reward):
        if len(reward) != num_tokens:
            raise ValueError(
                f"reward {index} has {len(reward)} per-token values but response {index} has {num_tokens} tokens "
                "(the stop token included). Fix: one value per response token, or one number for the whole response"
            )
        values = [float(v) for v in reward]
    else:
        raise TypeError(
            f"reward {index}: expected a number, a 0-d tensor or a list of per-token numbers, got "
            f"{type(reward).__name__}: {reward!r:.100}"
        )
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"reward {index} is not finite ({bad[0]}); every reward must be a finite number")
    return values
