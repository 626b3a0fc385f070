"""Training-step throughput of the real trainers on a Qwen2.5-0.5B-shaped model, as model FLOP
utilisation (docs/design.md, "Measuring speed"; the method of ``sft_throughput.py`` and ``dpo_throughput.py``).

    python benchmarks/gpu_throughput.py                          # on a CUDA machine: variants baseline and fast
    python benchmarks/gpu_throughput.py --variant fast --runs sft_packed --compile --steps 10
    python benchmarks/gpu_throughput.py --variant sharded --runs sft_padded,dpo_padded  # FSDP2 at world size 1
    python benchmarks/gpu_throughput.py --tiny                   # the same code path on CPU in seconds

The model has Qwen2.5-0.5B's shape (24 layers x 896, 14 query / 2 key-value heads, 151,936-token
vocabulary, tied embeddings: 494M parameters) with seeded random weights, saved in bfloat16 (as
Qwen2.5 is published; float32 variants load them upcast, exactly) to a temporary
directory beside the offline ``chatml`` fixture tokenizer (``posttrain.testing``); the synthetic
rows only use that tokenizer's few hundred ids. Runs, each measured with gradient checkpointing off
and on:

- ``sft_padded``: 8 text rows per step of 256-2048 tokens (uniform, seeded), max_length 2048;
- ``sft_packed``: the same rows packed into rows of 2048 tokens, with as many packed rows per step
  as carry ~8 of the original rows' tokens;
- ``dpo_padded``: 8 pairs per step (prompt 64-256 tokens, completions 64-760, so at most 1024
  tokens per sequence), the reference a frozen copy of the model run next to the policy.

Variants (``--variant``, repeatable or comma-separated):

- ``baseline``: the trainers' defaults: float32 weights, bf16 autocast on a GPU that has it
  (``mixed_precision=auto``), sdpa attention;
- ``fast``: ``model_dtype=bfloat16`` with float32 master weights, ``adamw_implementation=auto``,
  and ``attn_implementation=torch_varlen`` for the packed run on CUDA (sdpa everywhere else).
- ``sharded``: ``baseline`` with ``fsdp=True``: FSDP2 over one process (world size 1; the DPO
  reference sharded too), float32 shards all-gathered in bf16 and gradients reduced in float32 on
  a GPU. One GPU shards nothing away; the run checks that the sharded path trains there, at what
  speed and memory next to ``baseline``, with the same first loss. Not in the default set, and
  alone in its process (``--variant sharded``): the process then belongs to a distributed job.

``--compile`` adds ``torch_compile=True`` to every variant; give it ``--warmup 3`` or more, since
every step's batch has another shape and the second shape recompiles (on CPU, with one warm-up
step, the recompilation lands in the timed steps). For each measurement the script prints
and records real (non-pad) tokens per second (and pairs per second for DPO) over the steps after
the warm-up, the model FLOP utilisation

    MFU = (6 x (non-embedding parameters + LM head parameters) + 12 x layers x hidden x context)
          x real tokens per second / peak

(``common.flops_per_token(..., include_head=True)``; the context is each token's own example's
length, as in the CPU benchmarks; recomputation under gradient checkpointing is not counted; DPO
adds the reference's forward pass, a third of the policy's forward+backward, and counts the head on
every token although the trainer runs it on completion tokens only), the peak memory and the first
step's loss (equal across variants up to the variant's rounding, and across checkpointing on/off).
The peak is the best bf16 8192^3 matmul rate measured in the same process before and after the
runs on CUDA, the float32 ``common.matmul_peak`` on CPU. Memory is ``torch.cuda.max_memory_allocated``
(reset before each measurement, so it includes weights, gradients and optimizer state) on CUDA
and the growth of the process's peak resident memory over the measurement on CPU (Linux; null
where the peak cannot be reset); ``memory_source`` says which.

The results go to stdout as one JSON object at the end (trainer chatter goes to stderr) and, with
``--json FILE``, to that file, rewritten after every measurement so a run cut short keeps what it
measured (``"complete": false``).

``--tiny`` runs the same code on CPU, even on a GPU machine, in well under a minute (a 2-layer
64-wide Qwen2 with the tokenizer's vocabulary, 2 rows of 16-64 tokens per step, max_length 64, at
most 2 timed steps after 1 warm-up step, one thread): a check of the script
(tests/test_gpu_throughput_benchmark.py), not a measurement. ``benchmarks/gpu_check.sh`` is the
one command for a GPU machine.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from common import (
    WORDS,
    StepTimer,
    busy_message,
    flops_per_token,
    load_average,
    matmul_peak,
    non_embedding_parameters,
    parse_benchmark_args,
)

RUNS = ("sft_padded", "sft_packed", "dpo_padded")
VARIANTS = ("baseline", "fast", "sharded")
DEFAULT_VARIANTS = ("baseline", "fast")

QWEN2_5_0_5B = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True, "rope_theta": 1e6,
}
# vocab_size None: the tokenizer's
TINY_MODEL = {
    "vocab_size": None, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Scale:
    """The model and the shape of the synthetic data of one scale of the benchmark."""

    model: dict
    rows_per_step: int
    row_tokens: tuple[int, int]
    max_length: int
    pairs_per_step: int
    prompt_tokens: tuple[int, int]
    completion_tokens: tuple[int, int]
    dpo_max_length: int
    cpu_peak_size: int = 2048


FULL = Scale(QWEN2_5_0_5B, 8, (256, 2048), 2048, 8, (64, 256), (64, 760), 1024)
TINY = Scale(TINY_MODEL, 2, (16, 64), 64, 2, (8, 16), (8, 40), 64, cpu_peak_size=1024)


# ----------------------------------------------------------------------------- model and data


def save_model(scale: Scale, device: torch.device):
    """``(tokenizer, directory, counter)``: the seeded random model saved in bfloat16 with the
    ``chatml`` fixture tokenizer, and a weightless (meta-device) copy of it for counting parameters.
    Every variant loads the same values (float32 variants upcast them exactly)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from posttrain.testing import build_tokenizer

    tokenizer = build_tokenizer("chatml")
    spec = dict(scale.model)
    spec["vocab_size"] = spec["vocab_size"] or len(tokenizer)
    if spec["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocabulary {spec['vocab_size']} smaller than the tokenizer's {len(tokenizer)}")
    config = Qwen2Config(
        **spec, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device(device):  # a 494M-parameter init is quicker on the GPU
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    directory = tempfile.mkdtemp(prefix="bench-gpu-model-")
    model.to(torch.bfloat16).save_pretrained(directory)  # as Qwen2.5 publishes its weights; half the loading
    tokenizer.save_pretrained(directory)
    del model
    with torch.device("meta"):
        counter = AutoModelForCausalLM.from_config(config)
    return tokenizer, directory, counter


def text_of_length(tokenizer, rng: random.Random, tokens: int, prefix: str = "") -> str:
    """Random words from ``common.WORDS`` whose tokenization (with ``prefix``) is at most
    ``tokens`` long, and within one word of it. A binary search over the number of words: a few
    tokenizer calls instead of ``common.make_rows``' one per dropped word (minutes at 2048 tokens)."""
    words = [rng.choice(WORDS) for _ in range(tokens)]  # every word is at least one token

    def count(k: int) -> int:
        return len(tokenizer(prefix + " ".join(words[:k]))["input_ids"])

    low, high = 0, len(words)  # count(low) <= tokens
    while low < high:
        middle = (low + high + 1) // 2
        if count(middle) <= tokens:
            low = middle
        else:
            high = middle - 1
    return prefix + " ".join(words[:low])


def make_sft_rows(tokenizer, count: int, tokens: tuple[int, int], seed: int) -> list[dict]:
    """Text rows whose token counts, EOS included, are drawn uniformly in ``tokens``."""
    rng = random.Random(seed)
    return [{"text": text_of_length(tokenizer, rng, rng.randint(*tokens) - 1)} for _ in range(count)]  # EOS is appended


def make_pairs(tokenizer, count: int, scale: Scale, seed: int) -> list[dict]:
    """Preference pairs: a prompt and two completions (EOS included) of uniformly drawn lengths."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        prompt = text_of_length(tokenizer, rng, rng.randint(*scale.prompt_tokens))
        chosen, rejected = (text_of_length(tokenizer, rng, rng.randint(*scale.completion_tokens) - 1, prefix=" ") for _ in range(2))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def packed_rows_per_step(tokenizer, rows: list[dict], rows_per_step: int, max_length: int) -> int:
    """Packed rows per step that carry about ``rows_per_step`` of ``rows``' tokens."""
    from posttrain.data.packing import best_fit_decreasing

    lengths = [min(len(tokenizer(row["text"])["input_ids"]) + 1, max_length) for row in rows]
    bins = best_fit_decreasing(lengths, max_length)
    return max(1, round(rows_per_step * len(bins) / len(rows)))


# ----------------------------------------------------------------------------- measuring


def cuda_bf16_peak(size: int = 8192, repeats: int = 8, per_timing: int = 4) -> float:
    """Best bf16 FLOP/s of ``size``-cubed matmuls on the current CUDA device (after warm-up)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per_timing):
            a @ b
        end.record()
        end.synchronize()
        best = max(best, per_timing * 2 * size**3 / (start.elapsed_time(end) / 1e3))
    del a, b
    torch.cuda.empty_cache()
    return best


def measure_peak(cuda: bool, scale: Scale) -> float:
    return cuda_bf16_peak() if cuda else matmul_peak(scale.cpu_peak_size)


class SyncedStepTimer(StepTimer):
    """``StepTimer`` that waits for the device first, so a step's time includes its kernels."""

    def __init__(self, cuda: bool):
        super().__init__()
        self.cuda = cuda

    def __call__(self, trainer, state) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        super().__call__(trainer, state)

    def seconds(self, warmup: int) -> float:
        return self.times[-1] - self.times[warmup - 1]


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


class PeakMemory:
    """Peak memory over a measurement: CUDA's allocator high-water mark, or on CPU the growth of
    the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.source: str | None = "cuda_max_memory_allocated" if cuda else "cpu_peak_rss_growth"
        self.base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
            self.base = _proc_status_bytes("VmRSS")
        except OSError:
            self.source = None

    def peak_gib(self) -> float | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        if self.source is None:
            return None
        try:
            return max(_proc_status_bytes("VmHWM") - self.base, 0) / 2**30
        except OSError:
            return None


def free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def record_first_loss(trainer) -> list:
    """Wrap ``trainer.compute_loss`` to keep the first micro-batch's ``(summed loss, units)``
    (no device read until the run is over)."""
    record: list = []
    compute = trainer.compute_loss

    def recording(module, batch):
        loss_sum, metrics = compute(module, batch)
        if not record:
            record.append((loss_sum.detach().float(), trainer.count_units(batch)))
        return loss_sum, metrics

    trainer.compute_loss = recording
    return record


def variant_options(variant: str, run: str, cuda: bool, compile_model: bool) -> dict:
    """The trainer options of ``variant`` for ``run``: CUDA-only choices only on CUDA."""
    options: dict = {}
    if variant == "fast":
        options = {
            "model_dtype": "bfloat16",
            "master_weights": True,
            "adamw_implementation": "auto",
            "attn_implementation": "torch_varlen" if cuda and run == "sft_packed" else "sdpa",
        }
    if variant == "sharded":
        options = {"fsdp": True}
    if compile_model:
        options["torch_compile"] = True
    return options


@dataclass
class Setup:
    """What every measurement shares."""

    scale: Scale
    model_dir: str
    counter: torch.nn.Module
    sft_rows: list
    packed_batch: int
    pairs: list
    steps: int
    warmup: int
    cuda: bool
    compile_model: bool
    results: list = field(default_factory=list)


def build_trainer(setup: Setup, run: str, output_dir: str, options: dict, callbacks: list):
    scale, total = setup.scale, setup.steps + setup.warmup
    common = dict(output_dir=output_dir, max_steps=total, logging_steps=0, progress_bar=False, save_final_model=False, **options)
    if run == "dpo_padded":
        from posttrain.algorithms.dpo import DPOConfig, DPOTrainer

        config = DPOConfig(learning_rate=1e-6, per_device_train_batch_size=scale.pairs_per_step, max_length=scale.dpo_max_length,
                           reference_mode="model", **common)
        return DPOTrainer(setup.model_dir, config, train_dataset=setup.pairs, callbacks=callbacks)
    from posttrain.algorithms.sft import SFTConfig, SFTTrainer

    packed = run == "sft_packed"
    config = SFTConfig(learning_rate=1e-5, per_device_train_batch_size=setup.packed_batch if packed else scale.rows_per_step,
                       max_length=scale.max_length, packing=packed, **common)
    return SFTTrainer(setup.model_dir, config, train_dataset=setup.sft_rows, callbacks=callbacks)


def example_lengths(trainer, run: str) -> list[int]:
    dataset = trainer.train_source.dataset
    if run == "dpo_padded":
        return [len(item[side]["input_ids"]) for item in dataset for side in ("chosen", "rejected")]
    return [len(example["input_ids"]) for unit in range(len(dataset)) for example in dataset[unit]]


def measure(setup: Setup, run: str, variant: str, fraction: float, peak: float) -> dict:
    """One measurement; ``fraction``: the share of blocks under gradient checkpointing (0: off)."""
    checkpointing = fraction > 0
    options = variant_options(variant, run, setup.cuda, setup.compile_model)
    options["gradient_checkpointing"] = checkpointing
    if 0 < fraction < 1:
        options["gradient_checkpointing_fraction"] = fraction
    free_memory(setup.cuda)
    memory = PeakMemory(setup.cuda)
    memory.start()
    timer = SyncedStepTimer(setup.cuda)
    with tempfile.TemporaryDirectory() as output_dir, contextlib.redirect_stdout(sys.stderr):
        trainer = build_trainer(setup, run, output_dir, options, [timer])
        first = record_first_loss(trainer)
        trainer.train()
    free_memory(setup.cuda)
    peak_memory = memory.peak_gib()
    loss_sum, units = first[0]
    per_token = flops_per_token(setup.counter, example_lengths(trainer, run), include_head=True)
    if run == "dpo_padded":
        per_token *= 8 / 6  # plus the reference's forward: 2N (and a third of the attention) per token
    tokens_per_s = timer.tokens_per_second(setup.warmup)
    result = {
        "run": run,
        "variant": variant,
        "gradient_checkpointing": checkpointing,
        "checkpointing_fraction": fraction,
        "tokens_per_s": tokens_per_s,
        "pairs_per_s": setup.scale.pairs_per_step * setup.steps / timer.seconds(setup.warmup) if run == "dpo_padded" else None,
        "mfu": per_token * tokens_per_s / peak,
        "flops_per_token": per_token,
        "peak_memory_gib": peak_memory,
        "memory_source": memory.source,
        "first_loss": float(loss_sum) / float(units),
        "steps": setup.steps,
        "batch_size": trainer.config.per_device_train_batch_size,
        "options": options,
    }
    trainer.accelerator.free_memory()
    del trainer, first, loss_sum
    if setup.compile_model:
        torch._dynamo.reset()
    free_memory(setup.cuda)
    return result


def describe(result: dict) -> str:
    if "error" in result:
        return f"  {result['run']:<11} {result['variant']:<9} ckpt {_ckpt(result)} failed: {result['error']}"
    pairs = f" {result['pairs_per_s']:7.2f} pairs/s" if result["pairs_per_s"] is not None else " " * 15
    memory = f"{result['peak_memory_gib']:7.2f} GiB" if result["peak_memory_gib"] is not None else "     n/a   "
    return (f"  {result['run']:<11} {result['variant']:<9} ckpt {_ckpt(result)} "
            f"{result['tokens_per_s']:>10,.0f} tokens/s{pairs}  MFU {result['mfu']:.3f}  peak {memory}  first loss {result['first_loss']:.4f}")


# ----------------------------------------------------------------------------- main


def _ckpt(result: dict) -> str:
    fraction = result["checkpointing_fraction"]
    return "off " if fraction == 0 else "on  " if fraction == 1 else f"{fraction:.2f}"


def _fractions(values: list[str] | None) -> list[float]:
    """``--checkpointing`` values: off, on, or the share of blocks checkpointed (0-1)."""
    fractions = []
    for name in (n.strip() for value in (values or ["off,on"]) for n in value.split(",") if n.strip()):
        try:
            fraction = {"off": 0.0, "on": 1.0}.get(name) if name in ("off", "on") else float(name)
        except ValueError:
            raise SystemExit(f"--checkpointing takes off, on or a fraction in (0, 1], got {name!r}") from None
        if not 0 <= fraction <= 1:
            raise SystemExit(f"--checkpointing fraction must be in [0, 1], got {name}")
        fractions.append(fraction)
    return list(dict.fromkeys(fractions))


def _names(values: list[str] | None, allowed: tuple[str, ...], what: str, default: tuple[str, ...] | None = None) -> list[str]:
    names = [name.strip() for value in (values or [",".join(default or allowed)]) for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _add_arguments(parser) -> None:
    parser.add_argument("--variant", action="append", help=f"option sets to compare, repeatable or comma-separated ({', '.join(VARIANTS)}; default: {', '.join(DEFAULT_VARIANTS)}; sharded only alone)")
    parser.add_argument("--runs", action="append", help=f"runs to measure, repeatable or comma-separated ({', '.join(RUNS)}; default: all)")
    parser.add_argument("--checkpointing", action="append", help="gradient checkpointing settings, repeatable or comma-separated: off, on, or the share of blocks recomputed (gradient_checkpointing_fraction), e.g. off,0.67,on (default: off,on)")
    parser.add_argument("--compile", action="store_true", help="add torch_compile=True to every variant (use --warmup 3 or more: batch shapes vary, and the second shape recompiles)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batches on CPU: a quick check of the script")


def main(argv=None) -> int:
    args = parse_benchmark_args(argv, __doc__.splitlines()[0], steps=10, warmup=3, add_arguments=_add_arguments)
    variants, runs = _names(args.variant, VARIANTS, "variant", DEFAULT_VARIANTS), _names(args.runs, RUNS, "run")
    if "sharded" in variants and len(variants) > 1:
        raise SystemExit("--variant sharded makes the process part of a distributed job; measure it alone: --variant sharded")
    fractions = _fractions(args.checkpointing)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--steps and --warmup must be at least 1 (the rate is measured from the end of the warm-up)")
    scale = TINY if args.tiny else FULL
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainers too: before anything asks torch for a GPU
        # Ops this small gain nothing from threads, and on a busy machine (a test suite beside it)
        # every one of them waits for all threads to be scheduled: ~0.5 s per step instead of ms.
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available() and not args.tiny
    load = load_average()
    if not cuda and not args.tiny and busy_message() and not args.force:
        print(busy_message())
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    started = time.perf_counter()
    for module in ("posttrain.algorithms.sft", "posttrain.algorithms.dpo"):
        importlib.import_module(module)  # now, so the first measurement's memory does not include the imports
    tokenizer, model_dir, counter = save_model(scale, device)
    try:
        total = args.steps + args.warmup
        sft_rows = make_sft_rows(tokenizer, scale.rows_per_step * total, scale.row_tokens, seed=0)
        setup = Setup(
            scale=scale, model_dir=model_dir, counter=counter, sft_rows=sft_rows,
            packed_batch=packed_rows_per_step(tokenizer, sft_rows, scale.rows_per_step, scale.max_length),
            pairs=make_pairs(tokenizer, scale.pairs_per_step * total, scale, seed=1),
            steps=args.steps, warmup=args.warmup, cuda=cuda, compile_model=args.compile,
        )
        name = f"cuda: {torch.cuda.get_device_name()}" if cuda else f"cpu: {torch.get_num_threads()} threads"
        print(f"model: Qwen2 {sum(p.numel() for p in counter.parameters()) / 1e6:.1f}M parameters "
              f"({non_embedding_parameters(counter) / 1e6:.1f}M non-embedding, vocabulary {counter.config.vocab_size}) on {name}, "
              f"torch {torch.__version__}; set-up {time.perf_counter() - started:.0f}s", flush=True)
        peak_before = measure_peak(cuda, scale)
        report = {
            "device": name, "peak_flops": peak_before, "peak_dtype": "bfloat16" if cuda else "float32",
            "peak_flops_before": peak_before, "peak_flops_after": None, "load_before": load, "torch": torch.__version__,
            "tiny": args.tiny, "compile": args.compile, "steps": args.steps, "warmup": args.warmup,
            "packed_rows_per_step": setup.packed_batch, "complete": False, "results": setup.results,
        }
        print(f"{report['peak_dtype']} matmul peak {peak_before / 1e12:.3f} TFLOP/s", flush=True)
        for run in runs:
            for fraction in fractions:
                for variant in variants:
                    try:
                        result = measure(setup, run, variant, fraction, report["peak_flops"])
                    except Exception as error:  # one failing option set must not cost the others their figures
                        result = {"run": run, "variant": variant, "gradient_checkpointing": fraction > 0, "checkpointing_fraction": fraction,
                                  "error": f"{type(error).__name__}: {error}"}
                    if "error" in result:  # out of the except clause: its traceback no longer holds the trainer
                        free_memory(cuda)
                    setup.results.append(result)
                    print(describe(result), flush=True)
                    _save(args.json, report)
        peak_after = measure_peak(cuda, scale)
        # the best rate seen stands for the peak; MFU was computed against the first, so rescale
        report.update(peak_flops_after=peak_after, peak_flops=max(peak_before, peak_after), complete=True)
        for result in setup.results:
            if "mfu" in result:
                result["mfu"] *= peak_before / report["peak_flops"]
        print(f"{report['peak_dtype']} matmul peak {peak_before / 1e12:.3f} / {peak_after / 1e12:.3f} TFLOP/s (before/after); "
              f"load average {load} -> {load_average()}; {time.perf_counter() - started:.0f}s in all")
        _save(args.json, report)
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return 1 if any("error" in result for result in report["results"]) else 0


def _save(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    sys.exit(main())
