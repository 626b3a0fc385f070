#!/usr/bin/env bash
# The one command to run on a GPU machine: training throughput of the real trainers on a
# Qwen2.5-0.5B-shaped model (benchmarks/gpu_throughput.py), variants baseline and fast, with
# gradient checkpointing off and on; then the sharded variant (FSDP2 at world size 1: one GPU,
# bf16 compute, fp32 gradient reduction) of SFT and DPO in a process of its own; then the
# generation tokens/s of each rollout path of online RL (benchmarks/generation_paths.py: GRPO's
# rollout of 8 prompts x 8 generations on the same model in bfloat16). Ends within 5 minutes
# whatever happens.
#
#     bash benchmarks/gpu_check.sh [WHEEL_DIR]            # from anywhere; results in /tmp
#     OUT=/some/dir bash benchmarks/gpu_check.sh          # results in /some/dir
#
# WHEEL_DIR (default: .whl in the repository when it exists, else shared/wheels) holds the wheels
# of datasets, dill and multiprocess, which the GPU image lacks (it has torch with CUDA,
# transformers, accelerate, peft, rich and pyarrow); they are installed with `pip install
# --no-deps --target /tmp/site`, which goes first on PYTHONPATH. Make them here with
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#         datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
# (.whl is git-ignored locally: `echo /.whl/ >> .git/info/exclude`; the device tool carries it
# when named in `carry`). The machine needs no
# network: the model is built from a config with random weights and the tokenizer is the
# project's offline fixture.
#
# Output: nvidia-smi, the torch version, one line per measurement and, at the end, the results as
# JSON, also written to $OUT/gpu_throughput.json ($OUT/gpu_sharded.json for the sharded run, which
# gets SHARDED_BUDGET seconds, default 70). These files are rewritten after every measurement,
# so if the time limit cuts the run short they still hold what was measured ("complete": false),
# and they are printed then too. The generation paths get the last GENERATION_BUDGET seconds
# (default 90) and write $OUT/gpu_generation.json at their end only; their lines print as they go.
# PYTHON (default: python) chooses the interpreter; BUDGET (default 290) the seconds the whole
# script may take.

set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_WHEELS="$REPO/shared/wheels"
[ -d "$REPO/.whl" ] && DEFAULT_WHEELS="$REPO/.whl"
WHEELS="${1:-$DEFAULT_WHEELS}"
OUT="${OUT:-/tmp}"
PYTHON="${PYTHON:-python}"
BUDGET="${BUDGET:-290}"
RESULTS="$OUT/gpu_throughput.json"
SHARDED_RESULTS="$OUT/gpu_sharded.json"
SHARDED_BUDGET="${SHARDED_BUDGET:-70}"
GENERATION_RESULTS="$OUT/gpu_generation.json"
GENERATION_BUDGET="${GENERATION_BUDGET:-90}"

cd "$REPO" || exit 1
mkdir -p "$OUT"
SITE=/tmp/site
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== wheels from $WHEELS"
wheels=()
for name in datasets dill multiprocess; do
    found=$(ls "$WHEELS"/"$name"-*.whl 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$found" ]; then
        wheels+=("$found")
    else
        echo "no $name-*.whl in $WHEELS"
    fi
done
if [ "${#wheels[@]}" -gt 0 ]; then
    timeout 60 "$PYTHON" -m pip install --quiet --no-deps --no-index --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
        || echo "pip install failed (exit $?)"
fi
if ! "$PYTHON" -c "import datasets" 2>/dev/null; then
    echo "datasets does not import; posttrain's data layer needs it:"
    "$PYTHON" -c "import datasets"
    exit 1
fi

echo "== nvidia-smi"
timeout 20 nvidia-smi || echo "nvidia-smi failed (exit $?)"

echo "== versions"
timeout 60 "$PYTHON" -c "
import torch, transformers, accelerate, datasets
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)
"

left=$((BUDGET - SECONDS - 10 - SHARDED_BUDGET - GENERATION_BUDGET))  # 10 s for the end: the kill grace below and printing
[ "$left" -ge 1 ] || left=1
echo "== benchmarks/gpu_throughput.py ($left s at most)"
rm -f "$RESULTS"
timeout --kill-after=5 "$left" "$PYTHON" benchmarks/gpu_throughput.py --variant baseline,fast --steps 5 --warmup 2 --json "$RESULTS"
status=$?
if [ "$status" -ne 0 ]; then
    echo "gpu_throughput.py exited with $status$([ "$status" -eq 124 ] || [ "$status" -eq 137 ] && echo ' (time limit)'); what it measured:"
    cat "$RESULTS" 2>/dev/null || echo "(no results written)"
fi

left=$((BUDGET - SECONDS - 10 - GENERATION_BUDGET))
[ "$left" -ge 1 ] || left=1
echo "== benchmarks/gpu_throughput.py --variant sharded ($left s at most)"
rm -f "$SHARDED_RESULTS"
timeout --kill-after=5 "$left" "$PYTHON" benchmarks/gpu_throughput.py --variant sharded --runs sft_padded,dpo_padded --checkpointing off \
    --steps 5 --warmup 2 --json "$SHARDED_RESULTS"
sharded_status=$?
if [ "$sharded_status" -ne 0 ]; then
    echo "the sharded run exited with $sharded_status; what it measured:"
    cat "$SHARDED_RESULTS" 2>/dev/null || echo "(no results written)"
    [ "$status" -ne 0 ] || status=$sharded_status
fi
left=$((BUDGET - SECONDS - 10))
[ "$left" -ge 1 ] || left=1
echo "== benchmarks/generation_paths.py ($left s at most)"
rm -f "$GENERATION_RESULTS"
timeout --kill-after=5 "$left" "$PYTHON" benchmarks/generation_paths.py --device cuda --size qwen0.5b --dtype bfloat16 --rounds 2 --force \
    --json "$GENERATION_RESULTS"
generation_status=$?
if [ "$generation_status" -ne 0 ]; then
    echo "the generation paths run exited with $generation_status (its lines above are what it measured)"
    [ "$status" -ne 0 ] || status=$generation_status
fi
echo "== results in $RESULTS, $SHARDED_RESULTS and $GENERATION_RESULTS (${SECONDS}s in all)"
exit "$status"
