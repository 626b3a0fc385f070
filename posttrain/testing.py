"""Tiny offline tokenizers and models for tests, docs and the demo.

No model hub is reachable from our machines, so everything a test or the demo needs is built
here in seconds, seeded, and saved with ``save_pretrained`` so it loads with ``from_pretrained``
exactly like a hub checkpoint.

Tokenizers (all byte-level BPE trained on the same few lines, digits split one per token as in
Llama/Qwen, so arithmetic is learnable):

- ``chatml``: ChatML-style chat template, EOS ``<|endoftext|>``, a separate pad token. The chat
  template ends every turn with ``<|im_end|>``, which is *not* the EOS token: conversational
  rows must be trained on the template's end-of-turn token.
- ``no_template``: no chat template; adds a BOS token like Llama tokenizers do.
- ``non_prefix``: a template that rewrites earlier turns (it drops ``<think>...</think>`` blocks
  from assistant turns before the last user message, as Qwen3's does), so rendering a
  conversation turn by turn is not prefix-preserving.
- ``pad_is_eos``: ChatML template and pad token == EOS token.
- ``tools``: the ``chatml`` vocabulary with :data:`TOOLS_TEMPLATE`, a ChatML template with tool
  support in the style of Qwen2.5: ``tools`` rendered into the system turn, assistant
  ``tool_calls`` written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` and
  ``tool`` messages as turns of their own. Without tools it renders exactly as ``chatml``.

Models: tiny ``llama``, ``qwen2`` and ``gpt2`` causal LMs, and sequence classifiers
(``llama`` / ``qwen2`` backbones with one output, and a ``bert`` encoder).

Build once, reuse: :func:`fixture_path` caches built fixtures on disk (atomically).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

# Bump when any fixture below changes, so cached copies are rebuilt.
FIXTURE_VERSION = "1"

TOKENIZER_KINDS = ("chatml", "no_template", "non_prefix", "pad_is_eos", "tools")
CAUSAL_LM_ARCHS = ("llama", "qwen2", "gpt2")
CLASSIFIER_ARCHS = ("llama", "qwen2", "bert")

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Like Qwen3's template: reasoning inside <think>...</think> is dropped from assistant turns that
# come before the last user message. Rendering a conversation turn by turn is then not
# prefix-preserving: an earlier turn's text changes once a later user turn exists.
NON_PREFIX_TEMPLATE = (
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ content }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# ChatML with tool support, in the manner of Qwen2.5's template (our own wording, and compact: a
# tool is one line, its name, parameters and description, and there is no instruction text, so
# prompts stay short for tiny models). With tools, the system turn lists them; an assistant turn writes each
# call as <tool_call>{"name": ..., "arguments": {...}}</tool_call> after its text; a tool result is
# a turn of role "tool". Without tools, tool calls or tool messages it renders exactly as
# CHATML_TEMPLATE (a test checks it).
TOOLS_TEMPLATE = (
    "{% set ns = namespace(first=0) %}"
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% set ns.first = 1 %}{% endif %}"
    "Tools:\n"
    "{% for tool in tools %}{% set fn = tool['function'] if tool['function'] is defined else tool %}"
    "- {{ fn['name'] }}({{ (fn['parameters']['properties'] if fn['parameters'] is defined else {}) | join(', ') }}): "
    "{{ fn['description'] }}\n"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages[ns.first:] %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}{% set fn = call['function'] if call['function'] is defined else call %}"
    "<tool_call>{\"name\": \"{{ fn['name'] }}\", \"arguments\": "
    "{{ fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson }}}</tool_call>"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "What is 47+38? 85",
    "What is 12+9? 21",
    "What is 3+4? The answer is 7.",
    "Compute 120+31 and answer with the number only.",
    "user assistant system tool",
    "You are a helpful assistant. Answer briefly.",
    "Hello! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "<think>Add the tens, then the ones, and carry.</think> The answer is 58.",
    "Please think step by step before you answer the question.",
    "Yes no maybe correct wrong right answer question number sum",
    "Once upon a time there was a small model that learned to add.",
]


def build_tokenizer(kind: str = "chatml"):
    """Build one of the fixture tokenizers (see module docstring) in memory.

    Deterministic: the same ``kind`` always gives the same vocabulary and ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {TOKENIZER_KINDS}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer)

    kwargs = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    if kind == "no_template":
        bos_id = backend.token_to_id("<|bos|>")
        backend.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
        )
        kwargs["bos_token"] = "<|bos|>"
    if kind == "pad_is_eos":
        kwargs["pad_token"] = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if kind in ("chatml", "pad_is_eos"):
        tokenizer.chat_template = CHATML_TEMPLATE
    elif kind == "tools":
        tokenizer.chat_template = TOOLS_TEMPLATE
    elif kind == "non_prefix":
        tokenizer.chat_template = NON_PREFIX_TEMPLATE
    return tokenizer


def _causal_lm_config(arch: str, vocab_size: int, size: dict, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    hidden, layers, heads = size["hidden_size"], size["num_layers"], size["num_heads"]
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        return GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=heads, n_positions=size["max_positions"], **common
        )
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return config_cls(
        hidden_size=hidden,
        intermediate_size=size.get("intermediate_size", 4 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=size.get("num_kv_heads", heads),
        max_position_embeddings=size["max_positions"],
        tie_word_embeddings=size.get("tie_word_embeddings", True),
        **common,
    )


TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "max_positions": 512}
SMALL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "max_positions": 512}
# The demo's model: SMALL's width and depth with 8 heads of 16 dimensions, each with its own keys
# and values. Adding two numbers means gathering four digits at the answer; with SMALL's two key/
# value heads the demo recipe sat on a plateau for most of its run and learned addition in some
# runs only (benchmarks/learning_sweep.py), with these heads it learns it in every run we measured.
DEMO = {"hidden_size": 128, "num_layers": 4, "num_heads": 8, "num_kv_heads": 8, "max_positions": 512}
SIZES = {"tiny": TINY, "small": SMALL, "demo": DEMO}


def build_causal_lm(arch: str = "llama", tokenizer=None, size: str | dict = "tiny", seed: int = 0):
    """A randomly initialised causal LM (``llama``, ``qwen2`` or ``gpt2``) sized for ``tokenizer``.

    ``size`` is ``"tiny"`` (~0.1M params: unit tests), ``"small"`` (~1.0M), ``"demo"`` (~1.1M: the
    demo and the learning tests) or a dict with ``hidden_size``, ``num_layers``, ``num_heads``, ``max_positions`` and
    optionally ``intermediate_size``, ``num_kv_heads``, ``tie_word_embeddings``.
    """
    from transformers import AutoModelForCausalLM

    if arch not in CAUSAL_LM_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {CAUSAL_LM_ARCHS}")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    spec = SIZES[size] if isinstance(size, str) else size
    config = _causal_lm_config(arch, len(tokenizer), spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_sequence_classifier(arch: str = "llama", tokenizer=None, seed: int = 0, num_labels: int = 1):
    """A randomly initialised sequence classifier with ``num_labels`` outputs (a reward model).

    ``llama`` and ``qwen2`` score the last non-pad token (causal backbones); ``bert`` is an
    encoder that scores its first token.
    """
    from transformers import AutoModelForSequenceClassification, BertConfig

    if arch not in CLASSIFIER_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {CLASSIFIER_ARCHS}")
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    if arch == "bert":
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY["hidden_size"],
            num_hidden_layers=TINY["num_layers"],
            num_attention_heads=TINY["num_heads"],
            intermediate_size=4 * TINY["hidden_size"],
            max_position_embeddings=TINY["max_positions"],
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        config = _causal_lm_config(arch, len(tokenizer), TINY, tokenizer)
    config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config)


def _cache_root() -> Path:
    root = os.environ.get("POSTTRAIN_FIXTURES")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "posttrain" / "fixtures"


def fixture_path(name: str) -> Path:
    """Path of a saved fixture, building it on first use.

    ``name`` is ``"tokenizer-<kind>"``, ``"<arch>"`` / ``"<arch>-small"`` (a causal LM with the
    ``chatml`` tokenizer saved beside it) or ``"classifier-<arch>"``. The directory loads with
    ``AutoTokenizer.from_pretrained`` and ``AutoModelFor*.from_pretrained``. Built into a
    temporary directory and renamed, so concurrent test workers never see half a fixture.
    """
    key = hashlib.sha1(f"{FIXTURE_VERSION}:{name}".encode()).hexdigest()[:8]
    target = _cache_root() / f"{name}-{key}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _build_fixture(name, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; theirs is identical
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _build_fixture(name: str, directory: Path) -> None:
    from posttrain.train.console import quiet_third_party

    with quiet_third_party():  # no "Writing model shards" bars in test and demo output
        _save_fixture(name, directory)


def _save_fixture(name: str, directory: Path) -> None:
    if name.startswith("tokenizer-"):
        build_tokenizer(name.removeprefix("tokenizer-")).save_pretrained(directory)
        return
    tokenizer = build_tokenizer("chatml")
    if name.startswith("classifier-"):
        model = build_sequence_classifier(name.removeprefix("classifier-"), tokenizer)
    else:
        arch, _, size = name.partition("-")
        model = build_causal_lm(arch, tokenizer, size=size or "tiny")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# ---------------------------------------------------------------------- comparing floats
# Two float32 computations of the same quantity that add their terms in another order (a chunked
# head against the full one, AVX2 against AVX-512 kernels, 1 against 2 threads, packed against
# padded rows) agree to a few units of rounding of the LARGEST terms they summed, not of each
# result: a tied-embedding gradient entry near 0 whose neighbours are ~20 differs by ~5e-6
# absolute, which an element-wise atol=1e-6 / rtol=1e-5 rejects. So the tolerance is scaled to the
# tensor's own magnitude (tests/README.md, "Comparing floats").
FLOAT32_REL_TOLERANCE = 1e-5  # ~84 float32 eps of the largest entry; measured reorderings: 1e-7..3e-7 (issue 22)
# Weights after a few AdamW steps on reordered gradients: AdamW divides each update by the
# gradient's own running magnitude, so an entry whose gradient is mostly rounding noise moves by
# up to ~lr either way, and the difference grows with the steps. Measured over 3-4 steps at
# lr 1e-3 (1 vs 2 and 4 processes, sharded or not; AVX2 and AVX-512): up to 1.6e-4 of the
# tensor's largest value (tests/train/test_sharded.py's docstring).
TRAINED_WEIGHTS_REL_TOLERANCE = 5e-4


def assert_close_to_scale(actual, expected, *, rel: float = FLOAT32_REL_TOLERANCE, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` element-wise within ``rel * max|expected|`` (same shape and
    dtype). For two computations of one quantity that may sum in different orders; where the
    operations are the same sequence (a resumed run, the same accumulation order) compare exactly."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    atol = rel * scale if scale > 0 else rel * torch.finfo(torch.float32).tiny
    prefix = f"{msg}: " if msg else ""
    torch.testing.assert_close(
        actual, expected, atol=atol, rtol=0, msg=lambda detail: f"{prefix}{detail}\n(tolerance {rel:g} x max|expected| = {atol:.3g})"
    )


def assert_tensors_close_to_scale(actual: dict, expected: dict, *, rel: float = FLOAT32_REL_TOLERANCE, nonzero: bool = True) -> None:
    """Two ``{name: tensor}`` maps (gradients, weights) hold the same names and each pair of
    tensors agrees by :func:`assert_close_to_scale`. ``nonzero``: some tensor of ``expected`` must
    be nonzero somewhere (a comparison of two all-zero gradients proves nothing)."""
    assert actual.keys() == expected.keys(), f"different tensors: {sorted(actual.keys() ^ expected.keys())}"
    if nonzero:
        assert any(bool(t.abs().sum() > 0) for t in expected.values()), "every expected tensor is zero"
    for name, tensor in expected.items():
        assert_close_to_scale(actual[name], tensor, rel=rel, msg=name)


def _scripted_completions(tokenizer, scripts: list[list[int]], max_length: int):
    """``(completions, stats)`` of scripted token lists: each cut to ``max_length`` (then it ends
    for "length", else for "eos"), decoded without special tokens."""
    from posttrain.rollout import Completion, GenerationStats

    completions = []
    for tokens in scripts:
        cut = tokens[:max_length]
        completions.append(Completion(cut, tokenizer.decode(cut, skip_special_tokens=True), "eos" if len(cut) == len(tokens) else "length"))
    return completions, GenerationStats(len(completions), sum(len(c.token_ids) for c in completions), 1e-6)


class ScriptedEngine:
    """A generation engine that samples nothing: tests of online trainers use it where the
    experience must be identical across runs that split it differently (processes, micro-batch
    sizes), which sampling from a model cannot promise.

    Completion ``k`` of a prompt is ``texts[(k + sum(prompt_ids)) % len(texts)]`` tokenized,
    followed by EOS, and cut to ``max_completion_length`` (then it ends for "length"). Implements
    the :class:`~posttrain.rollout.engine.RolloutEngine` interface; give it to a trainer as
    ``rollout_engine=ScriptedEngine(tokenizer, texts)``."""

    holds_weights = False

    def __init__(self, tokenizer, texts):
        from posttrain.rollout import GenerationStats

        self.tokenizer = tokenizer
        self.texts = list(texts)
        self.last_stats = GenerationStats()
        self.calls = 0

    def generate(self, prompt_ids, options, num_generations: int = 1):
        self.calls += 1
        scripts = []
        for ids in prompt_ids:
            for k in range(num_generations):
                text = self.texts[(k + sum(ids)) % len(self.texts)]
                scripts.append(self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        completions, self.last_stats = _scripted_completions(self.tokenizer, scripts, options.max_completion_length)
        return completions

    def update_weights(self, model=None) -> None:
        """Nothing to update: the script does not depend on the weights."""


class ScriptedTurnsEngine:
    """A generation engine for multi-turn tests: ``reply(context_text)`` gives the next turn of the
    episode whose context (prompt and turns so far, decoded with special tokens) is
    ``context_text``, as text (tokenized, special tokens such as ``<|im_end|>`` recognised) or as
    token ids (returned exactly). A turn is cut to ``max_completion_length`` (then it ends for
    "length"); otherwise it ends for "eos".

    ``calls`` records the number of contexts of every ``generate`` call (one per round when
    episodes are batched). Implements the :class:`~posttrain.rollout.engine.RolloutEngine`
    interface."""

    def __init__(self, tokenizer, reply):
        from posttrain.rollout import GenerationStats

        self.tokenizer = tokenizer
        self.reply = reply
        self.last_stats = GenerationStats()
        self.calls: list[int] = []

    def generate(self, prompt_ids, options, num_generations: int = 1):
        self.calls.append(len(prompt_ids) * num_generations)
        scripts = []
        for ids in prompt_ids:
            for _ in range(num_generations):
                turn = self.reply(self.tokenizer.decode(list(ids), skip_special_tokens=False))
                scripts.append(list(turn) if not isinstance(turn, str) else self.tokenizer(turn, add_special_tokens=False)["input_ids"])
        completions, self.last_stats = _scripted_completions(self.tokenizer, scripts, options.max_completion_length)
        return completions

    def update_weights(self, model=None) -> None:
        """Nothing to update: the script does not depend on the weights."""
