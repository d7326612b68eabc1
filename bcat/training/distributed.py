"""Distributed runs: the ``Accelerator`` of a run, and the full (unsharded) state of a sharded model.

``bcat train`` runs as one process, or under ``accelerate launch`` / ``torchrun`` as DDP or FSDP2
(``fully_shard``: parameters, gradients and optimizer state split across ranks). The loop does not
care which: it sees ``policy`` (the prepared module) and ``model`` (the transformers / PEFT model
inside it, whose parameters FSDP2 turns into ``DTensor`` shards in place).

Checkpoints and the exported model need the FULL state, gathered with
``torch.distributed.checkpoint.state_dict`` (the API accelerate itself uses for FSDP2): every rank
takes part, rank 0 receives full CPU tensors, the other ranks an empty dict. Loading goes the other
way: rank 0 reads the file and broadcasts, each rank keeping its own shard. The same calls work on a
plain or DDP model, so one checkpoint format serves every setup.

Why not ``accelerator.save_state``/``load_state``: objects registered for checkpointing are read
back with ``torch.load(weights_only=False)`` (a pickle that can run code), FSDP's sharded state
needs ``torch.distributed.checkpoint``'s ``.metadata`` file, which is read with ``pickle.load``, and
an unreadable RNG file is skipped with an info line. bcat checkpoints hold only safetensors and JSON.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from bcat.errors import ConfigError

log = logging.getLogger(__name__)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def make_accelerator():
    """The run's ``Accelerator``: DDP or FSDP2 as ``accelerate launch`` asks, on GPUs or CPU processes.

    accelerate 1.15 resolves CPU processes to ``MULTI_CPU`` (DDP over gloo) and drops an FSDP
    configuration without a word; torch's FSDP2 does run over gloo, so here the FSDP plugin that
    ``accelerate launch`` described is handed to accelerate again, which then shards as it does on
    GPUs. FSDP1 (``fsdp_version: 1``) and DeepSpeed are refused: untested here (README,
    "Distributed training").
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("DeepSpeed is not supported by bcat train (untested); use FSDP2 "
                          "(accelerate launch --use_fsdp --fsdp_version 2) or DDP (--multi_gpu)")
    fsdp = _env_true("ACCELERATE_USE_FSDP")
    if fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError("FSDP1 is not supported by bcat train (untested); use FSDP2: fsdp_version: 2 in the "
                          "accelerate config, or accelerate launch --use_fsdp --fsdp_version 2")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if fsdp and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # what AcceleratorState.__init__ does for FSDP on GPUs, PartialState included (accelerate copies
        # PartialState's distributed_type into every later AcceleratorState())
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # read from the launcher's environment
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if fsdp and not accelerator.is_fsdp2 and accelerator.num_processes > 1:
        raise ConfigError(f"FSDP was asked for but accelerate set up {accelerator.distributed_type}")
    if accelerator.is_main_process:
        log.info("bcat: %s", describe_setup(accelerator.num_processes, accelerator.is_fsdp2, accelerator.device.type))
    return accelerator


def describe_setup(processes: int, fsdp2: bool, device: str) -> str:
    """What a person needs to know of the launch, e.g. ``training on 2 processes (FSDP2), cuda``.

    >>> describe_setup(1, False, "cpu")
    'training on 1 process, cpu'
    """
    if processes == 1:
        return f"training on 1 process, {device}"
    return f"training on {processes} processes ({'FSDP2' if fsdp2 else 'DDP'}), {device}"


def parallelism(accelerator, model: nn.Module) -> str:
    """What the run really did, for its summary: ``fsdp2`` (the parameters are sharded ``DTensor`` s),
    ``ddp`` (replicated on every process) or ``single``."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "fsdp2"
    return "ddp" if accelerator.num_processes > 1 else "single"


def prepare(accelerator, policy: nn.Module, model: nn.Module, optimizer):
    """``accelerator.prepare`` of the forward wrapper and the optimizer.

    FSDP2 shards each decoder layer as its own unit (all-gathered only while it runs): accelerate
    finds the layer class in ``_no_split_modules``, which transformers sets on the model, not on
    our wrapper.
    """
    policy._no_split_modules = getattr(model, "_no_split_modules", None)
    return accelerator.prepare(policy, optimizer)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def full_model_state(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The model's full state dict as CPU tensors on rank 0 (``{}`` on the others). Every rank must call it.

    ``trainable_only``: the parameters the optimizer updates, nothing else (a checkpoint's weights).
    Unsharded tensors may share storage with the live model: write them before the next step.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(cpu_offload=True, ignore_frozen_params=trainable_only))
    if trainable_only:
        names = _trainable_names(model)
        state = {k: v for k, v in state.items() if k in names}
    return {k: v.contiguous() for k, v in state.items()}


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """The optimizer's full state on rank 0 (``{}`` on the others), parameters named as in the model:
    ``{"state": {name: {"step": t, "exp_avg": t, ...}}, "param_groups": [{"lr": ..., "params": [name, ...]}]}``.
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _unwrap(optimizer), options=_options(cpu_offload=True))


def load_full_state(model: nn.Module, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Put full state (as from :func:`full_model_state` with ``trainable_only`` and
    :func:`full_optimizer_state`) back; only rank 0's arguments are read, each rank keeps its shard.
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    broadcast = _distributed()
    # strict=False: frozen weights are not in a checkpoint (the caller checks the trainable names).
    # Not the flat optimizer layout: torch 2.13 fails to load it together with full_state_dict.
    set_model_state_dict(model, weights, options=_options(broadcast_from_rank0=broadcast, strict=False))
    set_optimizer_state_dict(model, _unwrap(optimizer), optimizer_state,
                             options=_options(broadcast_from_rank0=broadcast))


def _unwrap(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer


def process_index() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not _distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a decision or an error that every rank must act on together)."""
    if not _distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
