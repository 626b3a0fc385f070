"""The model side of distillation: the shared-vocabulary check, the frozen teacher, and the
student module whose forward pass returns the divergence from the teacher at scored positions.

Neither model's ``(B, T, V)`` logits are ever built (for architectures whose logits are
``lm_head(hidden)``): the teacher's body runs without gradient and keeps only the hidden states
``(n, Ht)`` of the ``n`` scored positions; the student's body runs with gradient, and
:func:`~posttrain.losses.distill.chunked_divergence` runs the two heads side by side over chunks
of those positions. The divergence is computed inside the student module's ``forward``, so that
DDP/FSDP (which wrap that module) see the head's use of the student's weights.
"""

from __future__ import annotations

import torch
from torch import nn

from posttrain.errors import ModelError
from posttrain.losses.distill import DivergenceOptions, DivergenceStats, chunked_divergence
from posttrain.models.causal_lm import TokenLogProbs
from posttrain.models.loading import is_peft_model


def check_same_vocabulary(student_tokenizer, teacher_tokenizer) -> int:
    """The number of tokens the two tokenizers share, which must be all of them.

    Distillation compares next-token distributions entry by entry, so token ``i`` must be the
    same string for both models. Raises :class:`~posttrain.errors.ModelError` naming both sizes
    and the first id whose token differs (or exists on one side only)."""
    student_size, teacher_size = len(student_tokenizer), len(teacher_tokenizer)
    student_tokens = student_tokenizer.convert_ids_to_tokens(list(range(student_size)))
    teacher_tokens = teacher_tokenizer.convert_ids_to_tokens(list(range(teacher_size)))
    if student_size == teacher_size and student_tokens == teacher_tokens:
        return student_size
    first = next((i for i, (s, t) in enumerate(zip(student_tokens, teacher_tokens)) if s != t), min(student_size, teacher_size))
    student_token = repr(student_tokens[first]) if first < student_size else "(none)"
    teacher_token = repr(teacher_tokens[first]) if first < teacher_size else "(none)"
    raise ModelError(
        f"the teacher's tokenizer differs from the student's (student {student_size} tokens, teacher {teacher_size}; first "
        f"difference at id {first}: student {student_token}, teacher {teacher_token}): distillation compares the two models' "
        "next-token distributions token by token, so use a teacher that shares the student's tokenizer (the same model family)"
    )


def check_head_covers(model: nn.Module, vocab_size: int, role: str) -> None:
    """Raise :class:`ModelError` when ``model``'s output layer has fewer rows than the tokenizer
    has tokens (``role``: "student" or "teacher", for the message)."""
    rows = getattr(getattr(model, "config", None), "vocab_size", None)
    if rows is not None and rows < vocab_size:
        raise ModelError(f"the {role} model predicts {rows} tokens but its tokenizer has {vocab_size}: they do not belong together")


def merge_adapters(model: nn.Module) -> nn.Module:
    """``model`` with its LoRA adapters folded into its weights, so that it runs as a plain model:
    a peft model through ``merge_and_unload``, a transformers model that loaded an adapter
    directory (``_hf_peft_config_loaded``) by merging each adapter layer in place. Other models
    are returned as they are."""
    if is_peft_model(model):
        return model.merge_and_unload()
    if getattr(model, "_hf_peft_config_loaded", False):
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()
    return model


def freeze_teacher(model: nn.Module, chunk_size: int | None = None) -> TokenLogProbs:
    """The teacher as a :class:`TokenLogProbs` in eval mode (no dropout) with every parameter
    frozen (``requires_grad=False``) and any LoRA adapters merged (:func:`merge_adapters`)."""
    model = merge_adapters(model)
    model.eval().requires_grad_(False)
    return TokenLogProbs(model, chunk_size=chunk_size)


@torch.no_grad()
def teacher_states(teacher: TokenLogProbs, inputs: dict, positions: torch.Tensor) -> tuple[torch.Tensor, nn.Module]:
    """``(states (n, Ht), head)`` of the teacher at flat ``positions`` (see
    :meth:`TokenLogProbs.scored_states`), without gradient."""
    return teacher.scored_states(inputs, positions)


class DistillationStudent(TokenLogProbs):
    """The student: ``forward`` returns the per-token divergence from the teacher.

    ``forward(input_ids (B, T), position_ids, attention_mask, *, positions (n,), teacher_states
    (n, Ht), teacher_head, options, vocab_size, with_stats)`` returns
    :class:`~posttrain.losses.distill.DivergenceStats` of ``(n,)`` tensors, one per scored
    position, in the order of ``positions``. ``chunk_size`` (the constructor's) is positions per
    head chunk: None chooses automatically, 0 computes all positions at once.
    """

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        positions: torch.Tensor,
        teacher_states: torch.Tensor,
        teacher_head: nn.Module,
        options: DivergenceOptions,
        vocab_size: int | None = None,
        with_stats: bool = False,
    ) -> DivergenceStats:
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        states, head = self.scored_states(inputs, positions)
        chunk = self.chunk_size
        if chunk == 0 or isinstance(head, nn.Identity):
            # All positions at once; an Identity head means the full logits already exist (a
            # model that post-processes its logits), so chunking would only add work.
            chunk = max(1, states.shape[0])
        return chunked_divergence(states, head, teacher_states, teacher_head, options, vocab_size=vocab_size, chunk_size=chunk, with_stats=with_stats)
