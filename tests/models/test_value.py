"""PPO's critic layouts (posttrain.models.value): value alignment, packed == padded values, a reward
model as the critic (values = its score of each prefix), the LoRA adapter critic and clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from posttrain.algorithms.experience import Experience, Samples, completion_view, micro_batch
from posttrain.models.loading import apply_lora
from posttrain.models.reward import pooled_rewards
from posttrain.models.value import (
    CRITIC_ADAPTER,
    Critic,
    PolicyWithValue,
    add_critic_adapter,
    check_same_vocabulary,
    copy_critic,
    kept_trainable,
    new_value_head,
    value_model_critic,
)
from posttrain.rollout import Completion
from posttrain.testing import assert_close_to_scale, build_causal_lm

IDS = torch.tensor([[5, 9, 14, 3, 7, 22], [8, 8, 30, 2, 11, 4]])


def _random_head(hidden: int) -> torch.nn.Linear:
    head = new_value_head(hidden)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, hidden)[None])
        head.bias.fill_(0.25)
    return head


def test_shared_head_reads_the_policy_hidden_state_before_each_token(chatml):
    policy = build_causal_lm("llama", chatml).eval()
    head = _random_head(policy.config.hidden_size)
    module = PolicyWithValue(policy, Critic(head), "shared")
    out = module(IDS, with_values=True)
    hidden = policy.model(input_ids=IDS).last_hidden_state
    expected = torch.cat([torch.zeros(2, 1), head(hidden[:, :-1]).squeeze(-1)], dim=1)
    torch.testing.assert_close(out.values, expected)
    # the log-probs are those of the plain policy forward
    torch.testing.assert_close(out.logps, module(IDS).logps)
    assert out.entropy is None


def test_a_new_head_starts_at_zero_and_a_copy_is_independent(chatml):
    policy = build_causal_lm("llama", chatml)
    critic = copy_critic(policy)
    values = PolicyWithValue(policy, critic, "copy")(IDS, with_values=True).values
    assert torch.equal(values, torch.zeros_like(values))
    assert critic.backbone is not policy.model
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(critic.backbone.parameters(), policy.model.parameters()))


def test_packed_and_padded_values_agree(chatml):
    policy = build_causal_lm("llama", chatml).eval()
    critic = copy_critic(policy)
    critic.head = _random_head(policy.config.hidden_size)
    module = PolicyWithValue(policy, critic, "copy").eval()
    sequences = [([5, 9, 14], [3, 7]), ([8, 30], [2, 11, 4, 6]), ([12], [13, 1, 2])]
    samples = Samples([{"prompt_ids": p} for p, _ in sequences], [Completion(c, "", "eos") for _, c in sequences], [[0.0] * len(c) for _, c in sequences])
    experience = Experience.from_samples(samples)
    views = []
    for capacity in (0, 16):  # padded rows, then everything packed into one row
        batch = micro_batch(experience, [0, 1, 2], pad_token_id=1, capacity=capacity)
        out = module(batch.input_ids, batch.position_ids, with_values=True)
        views.append((completion_view(out.values, batch.completion_index) * batch.completion_mask, batch.input_ids.shape))
    assert views[0][1][0] == 3 and views[1][1][0] == 1
    assert_close_to_scale(views[1][0], views[0][0])
    assert views[0][0].abs().sum() > 0


def test_reward_model_as_critic_values_each_prefix_by_its_score(model_path):
    classifier = AutoModelForSequenceClassification.from_pretrained(model_path("classifier-llama")).eval()
    policy = AutoModelForCausalLM.from_pretrained(model_path("llama"))
    critic = value_model_critic(model_path("classifier-llama"))
    assert torch.equal(critic.head.weight, classifier.score.weight)  # the score head is the value head
    check_same_vocabulary(policy, critic)
    values = PolicyWithValue(policy, critic, "copy").eval()(IDS, with_values=True).values
    # values[:, t] is the reward model's score of the prefix ending at token t - 1
    for t in range(1, IDS.shape[1]):
        prefix = IDS[:, :t]
        assert_close_to_scale(values[:, t], pooled_rewards(classifier, prefix, torch.ones_like(prefix)))


def test_value_model_refusals(model_path, chatml):
    with pytest.raises(ValueError, match="causal .*Encoders"):
        value_model_critic(model_path("classifier-bert"))
    other = build_causal_lm("llama", chatml)
    other.resize_token_embeddings(other.get_input_embeddings().num_embeddings + 7)
    with pytest.raises(ValueError, match="same tokenizer"):
        check_same_vocabulary(build_causal_lm("llama", chatml), value_model_critic(other))


def test_adapter_critic_is_a_second_adapter_set_on_one_base(chatml):
    from posttrain.algorithms.ppo import PPOConfig

    config = PPOConfig(use_lora=True, lora_r=4, lora_alpha=8)
    policy = apply_lora(build_causal_lm("llama", chatml), config)
    critic = add_critic_adapter(policy, config)
    critic.head = _random_head(policy.get_base_model().config.hidden_size)
    with torch.no_grad():  # make the policy's adapter do something (peft starts B at 0)
        for name, parameter in policy.named_parameters():
            if "lora_B.default" in name:
                parameter.normal_(0, 0.5)
    module = PolicyWithValue(policy, critic, "adapter")
    out = module(IDS, with_values=True)
    assert policy.active_adapter == "default"
    # the critic's adapter (B = 0) leaves the base model's hidden states: not the policy's
    with kept_trainable(policy), policy.disable_adapter():
        base_hidden = policy.get_base_model().model(input_ids=IDS).last_hidden_state
    expected = torch.cat([torch.zeros(2, 1), critic.head(base_hidden[:, :-1]).squeeze(-1)], dim=1)
    assert_close_to_scale(out.values, expected)
    (out.values.sum() + out.logps.sum()).backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.requires_grad}
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)
    assert any(f"lora_B.{CRITIC_ADAPTER}" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any("lora_B.default" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert module.critic.head.weight.grad.abs().sum() > 0


def test_layout_must_match_the_critic(chatml):
    policy = build_causal_lm("llama", chatml)
    with pytest.raises(ValueError, match="does not match"):
        PolicyWithValue(policy, Critic(new_value_head(8)), "copy")
