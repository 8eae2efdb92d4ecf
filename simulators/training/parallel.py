"""Data-parallel fine-tuning: N processes train one model on N shards of every global batch.

`accelerate launch --multi_gpu --num_processes N ... -m recsim_env.cli train-sim ...` starts N
ranks (GPUs with NCCL; on a machine without GPUs, CPU processes with gloo). Every rank builds the same global batch of
`batch_size` packed rows (the batch order is a function of (seed, epoch)), item dropout is drawn
for the whole batch, and rank r keeps rows r, r + N, ... Each rank's loss is its summed NLL over
the *global* number of targets, and the ranks' gradients are summed, so every rank takes the
single-process step on the same global batch (up to float summation order: the validation loss
after N steps matched a one-process run within 1e-6 in the test, measured 1.1e-8 and 0). Only the main process writes
checkpoints, TensorBoard logs and the summary.

Two launches that look data-parallel are not, and are refused with a ValueError naming the
command that is:

- `accelerate launch --num_processes N` on a machine with fewer than 2 GPUs and no config file
  (also with `--cpu`): accelerate's CPU launcher starts ONE process and ignores N, saying
  nothing. It sets MASTER_PORT for N > 1 but no WORLD_SIZE, which is how it is recognised.
- `accelerate launch --multi_gpu` (torchrun underneath) without GPUs and without `cpu=True`: every rank
  would believe it is alone (N independent trainings writing one checkpoint); `make_accelerator`
  passes `cpu=True` whenever WORLD_SIZE > 1 and CUDA is absent, and checks the process count.
"""

from __future__ import annotations

import os
from typing import Any

import torch

DATA_PARALLEL_COMMANDS = (
    "accelerate launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no "
    "--dynamo_backend no -m recsim_env.cli train-sim ..."
)
"""The launch that gives N data-parallel ranks, on GPUs or (gloo) on CPUs. (torchrun itself
cannot start train-sim: its parser rejects train-sim's `--logs` as an ambiguous abbreviation
of its own `--logs-specs`.)"""


def launched_rank() -> int:
    """This process's rank under a distributed launcher (RANK; 0 without one)."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """Processes the launcher started (WORLD_SIZE; 1 without a distributed launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(bf16: bool) -> Any:
    """The `accelerate.Accelerator` of a training process, checked against its launch.

    Raises:
        ValueError: the launch asked for several processes but gives one (accelerate's CPU
            launcher), or accelerate sees another number of processes than were started.
    """
    from accelerate import Accelerator

    world = launched_world_size()
    if world == 1 and "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ:
        raise ValueError(
            "accelerate launch started 1 process although --num_processes asked for more: its "
            "launcher ignores --num_processes without several GPUs; for data-parallel "
            f"training run {DATA_PARALLEL_COMMANDS}"
        )
    cpu = world > 1 and not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")
    if acc.num_processes != world:
        raise ValueError(
            f"{world} processes were launched but accelerate runs {acc.num_processes}: "
            f"use {DATA_PARALLEL_COMMANDS}"
        )
    return acc


def shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Rows rank, rank + world, ... of a (B, T) batch (all rows with one process)."""
    if world == 1:
        return batch
    return {k: v[rank::world] for k, v in batch.items()}


def backward_on_shard(
    accelerator: Any, model: Any, batch: dict[str, torch.Tensor], full: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Back-propagate this rank's loss on its shard; returns the global batch's mean loss.

    With one process: packed_loss's mean NLL per target. Data-parallel: the shard's summed NLL
    over the global batch's number of targets, so the ranks' gradients add up to one process's
    (a rank whose shard is empty contributes none).

    Args:
        accelerator: the training's Accelerator.
        model: the prepared model (wrapped or not).
        batch: this rank's rows (`shard(full, ...)`), on the device.
        full: the whole global batch (on the CPU; only its targets are counted).
    """
    from simulators.lm.model import packed_loss

    net = accelerator.unwrap_model(model)
    if accelerator.num_processes == 1:
        with accelerator.autocast():
            loss, *_ = packed_loss(net, batch)
        accelerator.backward(loss)
        return loss.detach()
    targets = max(1, int((full["target_kind"] > 0).sum()))
    part = torch.zeros((), device=accelerator.device)
    if len(batch["target_kind"]):
        with accelerator.autocast():
            _, resp, leave, _n = packed_loss(net, batch)
        part = (resp + leave) / targets
        accelerator.backward(part)
    return torch.tensor(sum_over_ranks(accelerator, [float(part.detach())])[0])


def sum_gradients(accelerator: Any, params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place (one all-reduce).

    A parameter without a gradient on every rank keeps none (AdamW then skips it, as one process
    would); one with a gradient on some ranks gets the sum, zeros standing in for the others.
    """
    if accelerator.num_processes == 1:
        return
    parts = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
        for p in params
    ]
    has = torch.tensor([p.grad is not None for p in params], dtype=parts[0].dtype)
    flat = accelerator.reduce(torch.cat([*parts, has.to(parts[0].device)]), reduction="sum")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
    for p, count in zip(params, flat[offset:].tolist()):
        if count == 0:
            p.grad = None


def sum_over_ranks(accelerator: Any, values: list[float]) -> list[float]:
    """Element-wise sums of per-rank numbers (float64; the values themselves with one rank)."""
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(t, reduction="sum").tolist()]
