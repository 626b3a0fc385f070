"""``push_to_hub``: uploads the saved model when a hub answers (the hub client replaced by a
recording one: no hub is reachable here) and fails with one line, the model safe on disk, when
none does."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants
from transformers import AutoModelForCausalLM

from posttrain import SFTConfig, SFTTrainer
from posttrain.errors import HubError
from posttrain.tasks import ArithmeticTask


class RecordingHub:
    """Stands in for ``huggingface_hub.HfApi``: keeps each upload in a local folder."""

    uploads: dict[str, Path] = {}
    calls: list[tuple] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        RecordingHub.calls.append(("create_repo", repo_id, private, exist_ok))
        full = repo_id if "/" in repo_id else f"me/{repo_id}"  # the hub puts a bare name under the user's account
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{full}")

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
        RecordingHub.calls.append(("upload_folder", repo_id, commit_message))
        target = Path(self.root) / repo_id.replace("/", "--")
        shutil.copytree(folder_path, target, dirs_exist_ok=True)
        RecordingHub.uploads[repo_id] = target
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message=commit_message,
            commit_description="", oid="abc",
        )


@pytest.fixture
def hub(monkeypatch, tmp_path):
    RecordingHub.root, RecordingHub.uploads, RecordingHub.calls = tmp_path / "hub", {}, []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    return RecordingHub


def _trainer(model_path, output_dir, **values):
    options = dict(output_dir=str(output_dir), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-3, progress_bar=False, logging_steps=0)
    options.update(values)
    return SFTTrainer(model_path("llama"), SFTConfig(**options), train_dataset=ArithmeticTask(seed=0).prompt_completion("train", 4))


def test_push_uploads_the_trained_model(model_path, tmp_path, hub):
    trainer = _trainer(model_path, tmp_path / "run")
    trainer.train()
    url = trainer.push_to_hub("me/tiny-sft", private=True)
    assert url == "https://huggingface.co/me/tiny-sft/commit/abc"
    assert hub.calls == [("create_repo", "me/tiny-sft", True, True), ("upload_folder", "me/tiny-sft", "End of training")]
    uploaded = AutoModelForCausalLM.from_pretrained(hub.uploads["me/tiny-sft"]).state_dict()
    assert all(torch.equal(uploaded[name], tensor) for name, tensor in trainer.model.state_dict().items())


def test_push_to_hub_option_pushes_at_the_end(model_path, tmp_path, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    _trainer(model_path, tmp_path / "my-run", push_to_hub=True).train()
    # the output_dir's name, under the account the hub resolves it to
    assert [call[:2] for call in hub.calls] == [("create_repo", "my-run"), ("upload_folder", "me/my-run")]


def test_an_unreachable_hub_is_one_line_and_the_model_stays_on_disk(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on every machine here: no hub
    trainer = _trainer(model_path, tmp_path / "run")
    trainer.train()
    with pytest.raises(HubError) as failed:
        trainer.push_to_hub("me/tiny-sft")
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"push_to_hub: could not upload {tmp_path / 'run' / 'final'} to the hub repository 'me/tiny-sft'")
    assert message.endswith(f"upload it later with `hf upload me/tiny-sft {tmp_path / 'run' / 'final'}`")
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
