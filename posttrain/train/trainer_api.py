"""The methods and attributes TRL users reach for on a trainer, with TRL's meaning:
``trainer.args``, ``trainer.processing_class``, ``trainer.state.log_history``,
``add_callback`` / ``pop_callback`` / ``remove_callback``, ``is_world_process_zero()``,
``save_model()``, ``push_to_hub()`` and ``train(resume_from_checkpoint=...)``.

Mixed into :class:`posttrain.train.loop.Trainer`; nothing here changes how a run trains.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from posttrain.errors import ConfigError, HubError


def accepts_trl_train_arguments(train):
    """``train`` that also takes TRL's ``train(resume_from_checkpoint=True | "path")``.

    Applied to ``Trainer.train`` and to every subclass's override (``Trainer.__init_subclass__``),
    so ``DPOTrainer(...).train(resume_from_checkpoint=True)`` works although the subclass's own
    ``train`` takes no arguments; the inner ``super().train()`` calls pass none."""
    if getattr(train, "_takes_trl_arguments", False):
        return train

    @functools.wraps(train)
    def wrapper(self, resume_from_checkpoint=None, **unsupported):
        if unsupported:
            raise ConfigError(
                f"train() got {', '.join(sorted(unsupported))}: only resume_from_checkpoint is taken here (hyper-parameter "
                "search trials and ignore_keys_for_eval are not available)"
            )
        if resume_from_checkpoint not in (None, False):
            self.config.resume_from_checkpoint = "latest" if resume_from_checkpoint is True else os.fspath(resume_from_checkpoint)
        return train(self)

    wrapper._takes_trl_arguments = True
    return wrapper


class TrainerAPI:
    """TRL / ``transformers.Trainer`` names on a posttrain trainer (see the module docstring)."""

    @property
    def args(self):
        """The config (TRL's name for it)."""
        return self.config

    @property
    def processing_class(self):
        """The tokenizer (TRL's name for it)."""
        return self.tokenizer

    @property
    def callbacks(self) -> list:
        return self.callback_handler.callbacks

    @property
    def log_history(self) -> list[dict]:
        """``state.log_history``: one dict per logging step or evaluation, with its ``step``."""
        return self.state.log_history

    def add_callback(self, callback) -> None:
        """Add a ``TrainerCallback`` (instance or class) or a function ``fn(trainer, state)``."""
        self.callback_handler.add(callback)

    def pop_callback(self, callback):
        """Remove ``callback`` (an instance, or the first of a class) and return it; None if absent."""
        return self.callback_handler.pop(callback)

    def remove_callback(self, callback) -> None:
        self.callback_handler.pop(callback)

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    def _agree_on_output_dir(self) -> None:
        """All processes use the main process's default output_dir (their clocks may have
        ticked apart when each chose one)."""
        acc = self.accelerator
        if not self._output_dir_defaulted or acc.num_processes == 1:
            return
        from accelerate.utils import broadcast_object_list

        chosen = broadcast_object_list([self.config.output_dir])[0]
        if chosen != self.config.output_dir:
            self.config.output_dir = chosen
            acc.project_configuration.set_directories(chosen)

    # ------------------------------------------------------------------ events the loop reports

    def _record_log(self, step: int, metrics: dict) -> None:
        """Every logged record (training or evaluation) goes to ``state.log_history`` and to the
        callbacks' ``on_log``, on every process."""
        entry = {**metrics, "step": step}
        self.state.log_history.append(entry)
        self.callback_handler.fire("on_log", self, logs=entry)

    def _epoch_events(self, state, epochs_done: int) -> int:
        """``on_epoch_end`` for each epoch whose last batch this step consumed (then
        ``on_epoch_begin`` when training goes on); returns the epochs done so far."""
        done = state.epoch + (1 if state.batches_in_epoch >= self._batches_per_epoch else 0)
        going_on = state.step < state.total_steps and not self.callback_handler.control.should_training_stop
        for _ in range(epochs_done, done):
            self.callback_handler.fire("on_epoch_end", self)
            if going_on:
                self.callback_handler.fire("on_epoch_begin", self)
        return max(done, epochs_done)

    # ------------------------------------------------------------------ saving

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Save the model (as trained so far) and tokenizer with ``save_pretrained`` to
        ``output_dir`` (default ``<config.output_dir>/final``, where a run saves its final model;
        TRL's default is ``output_dir`` itself) and return that directory. Every process must
        call it (the weights are gathered first); only the main process writes."""
        from posttrain.train.checkpoint import save_pretrained_atomic

        directory = Path(output_dir) if output_dir is not None else Path(self.config.output_dir) / "final"
        state_dict = self.full_state_dict()
        if self.accelerator.is_main_process:
            save_pretrained_atomic(self.unwrapped_model(), self.tokenizer, directory, state_dict=state_dict)
            self.reporter.print_verbatim(f"saved the model and tokenizer to {directory}")
        self.accelerator.wait_for_everyone()
        return directory

    def push_to_hub(self, repo_id: str | None = None, *, commit_message: str = "End of training", private: bool | None = None, token: str | None = None, revision: str | None = None) -> str | None:
        """Save the model (:meth:`save_model`) and upload that directory to the Hugging Face Hub
        repository ``repo_id`` (default ``hub_model_id``, else the output directory's name under
        your account), creating it if needed. Returns the commit's URL (None on processes other
        than the main one). A hub that cannot be reached, or refuses, raises :class:`HubError`
        with one line that says where the model is saved and how to upload it later."""
        folder = self.save_model()
        if not self.accelerator.is_main_process:
            return None  # the main process uploads; no barrier after it, so a failed upload cannot leave others waiting
        repo_id = repo_id or self.config.hub_model_id or Path(self.config.output_dir).resolve().name
        private = self.config.hub_private_repo if private is None else private
        self.callback_handler.fire("on_push_begin", self)
        url = upload_folder(folder, repo_id, commit_message=commit_message, private=private, token=token, revision=revision)
        self.reporter.print_verbatim(f"pushed {folder} to {url}")
        return url


def upload_folder(folder: Path, repo_id: str, *, commit_message: str, private: bool | None, token: str | None, revision: str | None) -> str:
    """Create the hub repository ``repo_id`` if needed and upload ``folder`` to it; returns the
    commit URL. Every failure of the hub (offline, no token, refused, unreachable) becomes one
    :class:`HubError` line."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=getattr(repo, "repo_id", repo_id), folder_path=str(folder), commit_message=commit_message, revision=revision)
    except Exception as error:  # noqa: BLE001 - the hub's many failures (network, auth, offline) all end here, named
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubError(
            f"push_to_hub: could not upload {folder} to the hub repository {repo_id!r} ({type(error).__name__}: {cause}). "
            f"The model is saved in {folder}; upload it later with `hf upload {repo_id} {folder}`"
        ) from error
    return str(getattr(commit, "commit_url", None) or getattr(repo, "url", repo))


def check_hub_ready(config) -> None:
    """With ``push_to_hub`` on, refuse before any model loads what would fail only at the end
    of training: an offline hub or no token. (Whether the hub answers is known only then.)"""
    if not config.push_to_hub:
        return
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ConfigError("push_to_hub=true, but HF_HUB_OFFLINE is set: the hub cannot be reached. Unset HF_HUB_OFFLINE, or set push_to_hub=false and upload output_dir/final later")
    if get_token() is None:
        raise ConfigError("push_to_hub=true needs a hub token: log in with `hf auth login` or set HF_TOKEN (or set push_to_hub=false)")


# ----------------------------------------------------------------------------- the run's config


def run_config(trainer, config, overrides: dict):
    """``(config, output_dir_defaulted)``: the run's own copy of ``config`` -- one of ours, a
    TRL / transformers config object or a dict of options -- with ``overrides`` (keywords, TRL
    names allowed) on top, so the trainer may set values (output_dir, resume) without touching
    the caller's object. A missing output_dir becomes a new ``outputs/<algorithm>-<time>``."""
    from posttrain.config import config_from_dict
    from posttrain.train.run_record import algorithm_name, default_output_dir
    from posttrain.trl_names import translate_options

    config = _own_config(trainer, config)
    if config is None:
        config = config_from_dict(trainer.config_class, overrides)
    elif overrides:
        merged = {**dataclasses.asdict(config), **translate_options(type(config), overrides)}
        config = config_from_dict(type(config), merged)
    if config.output_dir is None:
        return dataclasses.replace(config, output_dir=default_output_dir(algorithm_name(trainer))), True
    return dataclasses.replace(config), False


def _own_config(trainer, config):
    """``config`` as one of ours (None stays None); anything that is not a config is refused
    with what to pass instead."""
    import torch

    from posttrain.config import TrainConfig, config_from_dict
    from posttrain.trl_names import options_from_object

    name, wanted = type(trainer).__name__, trainer.config_class.__name__
    if config is None or isinstance(config, trainer.config_class):
        return config
    if isinstance(config, TrainConfig):
        raise ConfigError(f"{name} takes a {wanted}, got a {type(config).__name__}; build a {wanted} with the same options")
    if isinstance(config, dict):
        return config_from_dict(trainer.config_class, config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):  # a TRL config, TrainingArguments
        return config_from_dict(trainer.config_class, options_from_object(config, trainer.config_class))
    if hasattr(config, "apply_chat_template") or hasattr(config, "convert_tokens_to_ids"):
        raise ConfigError(f"{name}(model, tokenizer): the second positional argument is the config (TRL's args); pass the tokenizer as processing_class=... (or tokenizer=...)")
    if isinstance(config, torch.nn.Module):
        raise ConfigError(f"{name}(model, model): the second positional argument is the config (TRL's args); a reference model is given by its path, ref_model=...")
    raise ConfigError(f"{name}: the config must be a {wanted} (or a TRL / transformers config object, or a dict of options), got {type(config).__name__}")
