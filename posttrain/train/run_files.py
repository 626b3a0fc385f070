"""The part of a run that lives on disk, mixed into :class:`posttrain.train.loop.Trainer`: the
output-directory guard (``train/output_dir.py``), resuming from a checkpoint, writing checkpoints
(and one on Ctrl-C), the run's files, and the final model (gathered from shards when sharded).

The loop decides when these happen; this module says how.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from posttrain.errors import ConfigError, OutputDirError
from posttrain.train import sharding
from posttrain.train.checkpoint import (
    latest_checkpoint,
    remove_stale_staging,
    resolve_resume_path,
    resume_requested,
    save_checkpoint,
    save_pretrained_atomic,
)
from posttrain.train.console import quiet_third_party
from posttrain.train.interrupt import InterruptGuard, TrainingInterrupted
from posttrain.train.output_dir import Decision, clear_previous_run, decide
from posttrain.train.reporting import resume_command
from posttrain.train.run_record import run_config_yaml
from posttrain.train.state import TrainState


class RunFiles:
    """Output directory, resume, checkpoints and the final model of a :class:`Trainer` run."""

    def _maybe_resume(self, state: TrainState) -> TrainState:
        """Load the checkpoint to resume from, if any, and drop the metrics records of the steps
        this run will redo."""
        path = self._prepare_output_dir()
        if path is not None:
            resumed = TrainState.load(path)
            if resumed.total_steps != state.total_steps:
                raise ConfigError(
                    f"checkpoint {path} was written for a run of {resumed.total_steps} steps, this run has "
                    f"{state.total_steps}. Fix: resume with the same data, batch size and schedule options"
                )
            if resumed.global_batch and resumed.global_batch != state.global_batch:
                processes = self.accelerator.num_processes
                raise ConfigError(
                    f"checkpoint {path} was written by a run that loaded {resumed.global_batch} items per micro-batch over all "
                    f"processes; this run loads {state.global_batch} ({processes} process(es) x {self.train_loader_batch_size()}). "
                    "Fix: on another number of processes, scale per_device_train_batch_size so the product stays the same"
                )
            sharding.check_checkpoint_kind(path, self.accelerator.is_fsdp2)
            self.accelerator.load_state(str(path))
            self.reporter.print(f"resumed from {path} at step {resumed.step}")
            state = resumed
        self.reporter.rewind(state.step, self.completion_log.path)
        return state

    def _output_dir_decision(self, early: bool = False) -> tuple[Decision, Path | None]:
        """What the output-directory guard decides (see ``train/output_dir.py``), by the main
        process for all; raises :class:`OutputDirError` when the run may not start there (when
        the trainer is made, ``early``, not for what ``train(resume_from_checkpoint=...)`` can
        still resolve). Returns the decision and the checkpoint to resume from."""
        from accelerate.utils import broadcast_object_list

        cfg, acc = self.config, self.accelerator
        path = resolve_resume_path(cfg.resume_from_checkpoint, cfg.output_dir)
        decision = None
        if acc.is_main_process:
            remove_stale_staging(cfg.output_dir)
            decision = decide(cfg.output_dir, path, resume_requested(cfg.resume_from_checkpoint), cfg.overwrite_output_dir)
        decision = broadcast_object_list([decision])[0] if acc.num_processes > 1 else decision
        if decision.problem is not None and not (early and decision.resumable):
            raise OutputDirError(decision.problem)
        return decision, path

    def _prepare_output_dir(self) -> Path | None:
        """Apply the output-directory guard's decision: delete what it clears (main process),
        say so; returns the checkpoint to resume from."""
        cfg, acc = self.config, self.accelerator
        decision, path = self._output_dir_decision()
        if acc.is_main_process and decision.clear:
            clear_previous_run(cfg.output_dir, decision.clear)
        if decision.note:
            self.reporter.print_verbatim(decision.note)
        acc.wait_for_everyone()
        return path

    def _save_checkpoint(self, state: TrainState) -> Path:
        cfg = self.config
        path = save_checkpoint(self.accelerator, cfg.output_dir, state, cfg.save_total_limit)
        self._saved_step = state.step
        self.callback_handler.fire("on_save", self)
        return path

    def _stop_if_interrupted(self, interrupt: InterruptGuard, state: TrainState) -> None:
        """After a Ctrl-C, stop at this step boundary with a checkpoint of it. All processes stop
        after the same step (the checkpoint is written together), so they agree first."""
        acc = self.accelerator
        requested = interrupt.requested
        if acc.num_processes > 1:
            requested = acc.reduce(torch.tensor([float(requested)], device=acc.device), reduction="sum").item() > 0
        if not requested or state.step >= state.total_steps:
            return  # at the last step the run ends normally, final model included
        saved = getattr(self, "_saved_step", None) == state.step
        path = latest_checkpoint(self.config.output_dir) if saved else self._save_checkpoint(state)
        message = (
            f"interrupted: stopped after step {state.step} of {state.total_steps} with checkpoint {path}. Resume with\n"
            f"  {resume_command(sys.argv)}"
        )
        self.reporter.print_verbatim(message)
        raise TrainingInterrupted(message, path)

    def _write_run_files(self) -> None:
        if not self.accelerator.is_main_process:
            return
        out = Path(self.config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = run_config_yaml(self, output_dir_defaulted=self._output_dir_defaulted, sources=self._sources)
        (out / "config.yaml").write_text(text)

    @quiet_third_party()
    def _finish(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if self.config.save_final_model:
            state_dict = self.full_state_dict()  # every process takes part in the gather
            if acc.is_main_process:
                final = Path(self.config.output_dir) / "final"
                path = save_pretrained_atomic(self.unwrapped_model(), self.tokenizer, final, state_dict=state_dict)
            acc.wait_for_everyone()  # train() returns on every process once final/ exists
        if acc.is_main_process:
            self.state.save(Path(self.config.output_dir))  # trainer_state.json: the run finished (and its log_history)
        if self.config.report_to:
            acc.end_training()
        self.reporter.finish(self.state, model_dir=path)

    def _push_if_asked(self) -> None:
        if self.config.push_to_hub:
            self.push_to_hub()

    def full_state_dict(self) -> dict | None:
        """The trained model's complete weights, keyed as in ``self.model.state_dict()``.

        Through ``accelerator.get_state_dict``, which gathers FSDP / DeepSpeed ZeRO-3 shards (a
        collective call: every process must make it); a process's own module holds only its
        shard there. None when nothing was trained (the model in memory is then complete)."""
        module = getattr(self, "module", None)
        if module is None:
            return None
        full = self.accelerator.get_state_dict(module)
        wrapper = self.accelerator.unwrap_model(module)
        if self.accelerator.is_fsdp2:  # gathered shards: tied weights come back as separate tensors
            full = sharding.retie(full, wrapper)
        if wrapper is self.model:
            return full
        # wrap_model put the Hugging Face model under an attribute: drop that key prefix
        name = next((name for name, child in wrapper.named_children() if child is self.model), None)
        if name is None:
            raise RuntimeError(f"{type(wrapper).__name__} does not hold the trained model as a direct child; cannot save it")
        prefix = name + "."
        return {key[len(prefix) :]: value for key, value in full.items() if key.startswith(prefix)}

    def unwrapped_model(self):
        """The Hugging Face (or peft) model being trained, without accelerate's wrappers."""
        return self.model
