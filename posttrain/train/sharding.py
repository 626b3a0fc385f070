"""Sharded training with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``), driven by
accelerate's FSDP2 plugin.

With ``fsdp: true`` (or ``accelerate launch --use_fsdp --fsdp_version 2``) every process keeps
1/N of each parameter, of its gradient and of its AdamW state, as DTensors sharded along their
first dimension. The sharding units are the model's transformer blocks (transformers'
``GradientCheckpointingLayer`` subclasses, see :func:`~posttrain.models.loading.transformer_blocks`):
a block's weights are all-gathered just before its forward and backward and freed after; what
is not in a block (embeddings, a tied LM head, the final norm, PPO's value head) forms the root
unit, gathered for the whole forward. Gradients are reduce-scattered after every micro-batch, so
they stay sharded through gradient accumulation.

How accelerate is made to do it, and why this module exists:

- accelerate 1.16 chooses FSDP only for GPU-like process groups (``AcceleratorState`` sets
  ``DistributedType.FSDP`` in its MULTI_GPU/NPU/XPU/... branch). A job of CPU processes is
  MULTI_CPU whatever the plugin says, and ``prepare`` then wraps the model in DDP: asked for FSDP,
  ``accelerate launch --use_fsdp`` on a CPU machine trains unsharded without a word.
  :func:`activate` tells accelerate's state that the gloo job is an FSDP job (the two
  assignments accelerate itself makes on a GPU), after which accelerate's own FSDP2 code runs
  unchanged: ``fully_shard`` per block and at the root, DTensor-aware gradient clipping,
  ``torch.distributed.checkpoint`` (DCP) for sharded checkpoints, and the full-state-dict
  gather for the final model. On a GPU accelerate chooses FSDP itself and nothing is changed.
- One process is a world of size 1: without a launcher, :func:`join_single_process_job` sets
  the variables ``torchrun --nproc_per_node 1`` would, so the run is sharded over one rank
  (a GPU run at world size 1 checks the whole path; a CPU one resumes a sharded checkpoint).
- Sharding that does not happen is an error: :func:`check_sharded` runs after ``prepare`` and
  refuses any parameter that is not a DTensor sharded over all processes.

Mixed precision on GPUs (``mixed_precision: bf16``): parameters are kept sharded in float32
(the float32 master weights and AdamW state are the shards), all-gathered and computed in
bfloat16, and gradients are reduce-scattered in float32 (``MixedPrecisionPolicy(param_dtype=
bfloat16, reduce_dtype=float32)``). ``model_dtype`` must stay float32: FSDP2 keeps one dtype per
unit, and the 16-bit weights with float32 masters of ``master_weights`` would duplicate what
the policy already does.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from posttrain.errors import ConfigError, TrainingError

# accelerate's name for the sharded model of a checkpoint (``pytorch_model_fsdp_<i>/``: a DCP
# directory); an unsharded checkpoint holds ``model.safetensors`` instead.
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"
UNSHARDED_MODEL_FILE = "model.safetensors"


class ShardingError(TrainingError):
    """Sharding was asked for and did not happen (or cannot happen here)."""


# ----------------------------------------------------------------------------- asking for it


def accelerate_fsdp_requested() -> bool:
    """Whether ``accelerate launch --use_fsdp`` (or an accelerate config with FSDP) started us."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def sharding_requested(config) -> bool:
    """Whether this run must be sharded: the ``fsdp`` option, or accelerate's launcher asked."""
    return bool(getattr(config, "fsdp", False)) or accelerate_fsdp_requested()


def plugin_for_run(config, mixed_precision: str):
    """Before a trainer's Accelerator is made: None when the run is not sharded; else the FSDP2
    plugin (:func:`build_plugin`), with the process made part of a distributed job (a world of
    one without a launcher) and accelerate's state freed of an earlier trainer's kind of run."""
    sharded = sharding_requested(config)
    release_state(sharded)
    if not sharded:
        return None
    join_single_process_job()
    return build_plugin(config, mixed_precision)


def build_plugin(config, mixed_precision: str):
    """accelerate's FSDP2 plugin for ``config``: transformer blocks as units (their class names
    are filled in per model by :func:`set_units`), sharded checkpoints (DCP), and the mixed
    precision policy of the module docstring."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from posttrain.options import fsdp_conflict

    problem = fsdp_conflict(config)
    if problem:
        raise ConfigError(f"sharded training (fsdp): {problem}")
    version = os.environ.get("FSDP_VERSION", "2")
    if accelerate_fsdp_requested() and version != "2":
        raise ConfigError(
            f"accelerate asks for FSDP version {version}; posttrain shards with FSDP2 only. Fix: add --fsdp_version 2 to "
            "`accelerate launch --use_fsdp` (fsdp_version: 2 under fsdp_config in an accelerate config file), or launch "
            "without --use_fsdp and set the option fsdp: true"
        )
    policy = None
    if mixed_precision in ("bf16", "fp16"):
        compute = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        policy = {"param_dtype": compute, "reduce_dtype": torch.float32}
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[],
        reshard_after_forward=bool(getattr(config, "fsdp_reshard_after_forward", True)),
        state_dict_type="SHARDED_STATE_DICT",
        mixed_precision_policy=policy,
        cpu_ram_efficient_loading=False,
        activation_checkpointing=False,  # the trainer's own option, applied per block before sharding
    )


def join_single_process_job() -> None:
    """Make a process started without a launcher a one-process distributed job (what ``torchrun
    --nproc_per_node 1`` would set up), so it has a process group to shard over."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:  # a free port for the rendezvous of this one process
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


# ----------------------------------------------------------------------------- accelerate's state


@contextmanager
def launcher_environment_kept():
    """Put ``ACCELERATE_USE_FSDP`` back as it was after the block: accelerate sets it when given a
    plugin, and a later trainer in the same process would take that for the launcher asking for
    FSDP (:func:`accelerate_fsdp_requested`)."""
    before = os.environ.get("ACCELERATE_USE_FSDP")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_USE_FSDP", None)
        else:
            os.environ["ACCELERATE_USE_FSDP"] = before



def release_state(sharded: bool) -> None:
    """Before a new Accelerator in a process whose accelerate state was made sharded by an earlier
    trainer: for an unsharded run, drop that state's per-run part and give the process group back
    the distributed type it had before FSDP, so the run is plain data parallel. (A sharded run
    needs nothing: :func:`activate` makes whatever state there is an FSDP one.)"""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    state, partial = AcceleratorState._shared_state, PartialState._shared_state
    if sharded or DistributedType.FSDP not in (state.get("distributed_type"), partial.get("distributed_type")):
        return
    AcceleratorState._reset_state(reset_partial_state=False)
    partial["distributed_type"] = _process_group_type(partial)


def _process_group_type(partial: dict):
    """The distributed type accelerate gives a process group by its device (before FSDP)."""
    from accelerate.utils import DistributedType

    if partial.get("backend") is None:
        return DistributedType.NO
    device = partial["device"].type
    return DistributedType.MULTI_GPU if device == "cuda" else DistributedType(f"MULTI_{device.upper()}")


def activate(accelerator, plugin) -> None:
    """Make ``accelerator`` an FSDP2 accelerator with ``plugin``. On GPUs accelerate chose FSDP
    itself; a CPU (gloo) job is MULTI_CPU and becomes FSDP here, as accelerate makes a GPU job
    one: the distributed type in both of its process-wide states and the plugin in the state."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type.value.startswith("MULTI_"):
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if state.distributed_type == DistributedType.FSDP:
        state.fsdp_plugin = plugin  # this run's plugin, also where an earlier trainer made the state
    if not accelerator.is_fsdp2:
        raise ShardingError(
            f"fsdp was asked for, but accelerate set this job up as {state.distributed_type.value} with "
            f"{accelerator.num_processes} process(es), which it cannot shard. Launch with torchrun / `accelerate launch` "
            "(or from plain Python for one process), on CPUs or GPUs"
        )


# ----------------------------------------------------------------------------- units and checks


def block_class_names(module: torch.nn.Module) -> list[str]:
    """Class names of the transformer blocks in ``module``, in first-seen order."""
    from posttrain.models.loading import transformer_blocks

    names: list[str] = []
    for block in transformer_blocks(module):
        if type(block).__name__ not in names:
            names.append(type(block).__name__)
    return names


def set_units(accelerator, module: torch.nn.Module) -> list[str]:
    """Make ``module``'s transformer blocks the sharding units of the next ``prepare`` (accelerate
    looks them up by class name in the module it shards); returns the names. None found: the
    whole module is one unit, still sharded, gathered at once."""
    names = block_class_names(module)
    accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap = names
    return names


def check_sharded(module: torch.nn.Module, num_processes: int) -> None:
    """Raise :class:`ShardingError` unless every parameter of ``module`` is a DTensor sharded
    along dim 0 over a mesh of all ``num_processes`` processes (what FSDP2 makes; DDP, or no
    wrapper at all, leaves plain tensors)."""
    from torch.distributed.tensor import DTensor, Shard

    wrong = []
    for name, parameter in module.named_parameters():
        sharded = (
            isinstance(parameter, DTensor)
            and parameter.device_mesh.size() == num_processes
            and tuple(parameter.placements) == (Shard(0),)
        )
        if not sharded:
            wrong.append(name)
    if wrong:
        raise ShardingError(
            f"fsdp was asked for, but {len(wrong)} parameter(s) are not sharded over the {num_processes} process(es), "
            f"e.g. {wrong[0]} ({type(dict(module.named_parameters())[wrong[0]]).__name__}). The run was stopped rather "
            "than train unsharded"
        )


def shard_frozen(accelerator, module: torch.nn.Module) -> torch.nn.Module:
    """Shard a module that is not trained (a reference policy) like the trained one, without
    registering it with accelerate: a checkpoint holds the trained model only."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    set_units(accelerator, module)
    sharded = fsdp2_prepare_model(accelerator, module)
    # FSDP keeps a root unit's weights gathered after forward, for the backward that follows; a
    # frozen module has none, so its embeddings and head would stay whole on every process
    sharded.set_reshard_after_forward(True, recurse=False)
    check_sharded(sharded, accelerator.num_processes)
    return sharded


def sharding_summary(module: torch.nn.Module, num_processes: int, units: list[str]) -> str:
    """One line for the run's start: the units and this process's share of the parameters."""
    from torch.distributed.tensor import DTensor

    total = sum(p.numel() for p in module.parameters())
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())
    names = ", ".join(units) or "none found (the whole model is one unit)"
    return f"FSDP2: parameters sharded over {num_processes} process(es), {local:,} of {total:,} held here; units: {names}"


def retie(state_dict: dict, model: torch.nn.Module, prefix: str = "") -> dict:
    """``state_dict`` (whole tensors gathered from shards, keys as in ``model.state_dict()`` after
    ``prefix``) with every tied parameter's keys sharing one tensor again, as in the model's own
    state dict: ``save_pretrained`` then writes a tied LM head once, as an unsharded run does."""
    first: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        key = prefix + name
        if key not in state_dict:
            continue
        if id(parameter) in first:
            state_dict[key] = state_dict[first[id(parameter)]]
        else:
            first[id(parameter)] = key
    return state_dict


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDED_MODEL_DIR).is_dir()


def check_checkpoint_kind(path: str | Path, sharded: bool) -> None:
    """Refuse to resume a sharded checkpoint unsharded, or the other way round (accelerate would
    fail deep in its loader, or not find the weights)."""
    if checkpoint_is_sharded(path) == sharded:
        return
    if sharded:
        raise ConfigError(
            f"checkpoint {path} was written by an unsharded run ({UNSHARDED_MODEL_FILE}); this run shards (fsdp). "
            "Fix: resume it with fsdp: false, on any number of processes"
        )
    raise ConfigError(
        f"checkpoint {path} was written by a sharded run ({SHARDED_MODEL_DIR}/, torch.distributed.checkpoint); this run "
        "does not shard. Fix: resume it with fsdp: true (any number of processes up to the saved one, one included)"
    )
