"""Distributed training with torchrun: DistributedDataParallel over the ranks torchrun starts.

`edgerec train --nproc N` checks the config, prepares the dataset and builds (or reuses) the
out-of-core shards in its own process, then runs `python -m edgerec.train.torchrun --standalone
--nproc-per-node N -m edgerec train ...`; plain `torchrun --nproc-per-node N -m edgerec train ...`
works too (rank 0 builds the shards while the others wait, `from_rank0`). What each rank does:

  * reads the same global batches as one process would (same order for the same seed) and gathers
    and trains on its slice (`samples.rank_slice`); DDP averages the gradients, so N ranks take the
    steps one process takes with train.batch_size, up to the order of float sums. Two exceptions:
    batch normalization (DIN's Dice activation) normalizes each rank's slice with its own statistics
    (SyncBatchNorm is CUDA-only), and COUPA's auxiliary point-process term (pp_loss_weight > 0)
    samples pp_rows rows per rank; a last global batch too small to give each rank 2 rows is left
    out (batch normalization needs 2);
  * always reads shards, never its own in-memory copy of the samples: memory per rank is the model,
    one shuffle window and a batch, and the behaviour store is one memory-mapped file that the page
    cache shares between ranks;
  * predicts its slice of every validation batch; the predictions are gathered so every rank
    computes the same metric and takes the same early-stopping decision;
  * only rank 0 prints, writes the checkpoint and the ledger.

Backend: gloo on CPU, NCCL on CUDA (each rank on cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (one process when not under torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: torch.device) -> World:
    """Join the process group torchrun set up (idempotent)."""
    w = world()
    if w.size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(w.local_rank)  # NCCL's collectives (all_gather_object too) use the current device
        # rank 0 may build the shards first while the others wait in a collective: allow hours, not 30 min
        # on CUDA, NCCL for the tensors of the device and gloo for the CPU scalars (`total`) and objects
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=6))
    return w


def from_rank0(make):
    """make() on rank 0, its value on every rank: rank 0 builds the shards once, and the others do
    not race it. An EdgerecError on rank 0 is raised on every rank (none waits for a broadcast that
    never comes)."""
    from edgerec.errors import EdgerecError

    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", make())
        except EdgerecError as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def rank0_only(log):
    """`log` on rank 0 (or without torchrun), a no-op on the other ranks."""
    return log if world().main else (lambda *a, **k: None)


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_batches(parts: list[np.ndarray], w: World) -> list[np.ndarray]:
    """Every rank's per-batch slices, put back in sample order: batch j is rank 0's slice of it,
    then rank 1's, ... (the order `rank_slice` cut it in)."""
    if w.size <= 1:
        return parts
    everyone: list = [None] * w.size
    dist.all_gather_object(everyone, parts)
    return [part for j in range(len(parts)) for part in (everyone[r][j] for r in range(w.size))]


def total(x: float, w: World) -> float:
    """The sum of x over the ranks."""
    if w.size <= 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def all_finite(loss: torch.Tensor, w: World) -> bool:
    """Whether the loss is finite on every rank. Why: a rank that stopped alone would leave the
    others waiting in DDP's gradient all-reduce; summing the losses (one scalar all-reduce per step)
    carries a NaN or an infinity to every rank, so all stop at the same step."""
    if w.size <= 1:
        return bool(torch.isfinite(loss))
    t = loss.detach().float().reshape(1).clone()  # on the loss's device: NCCL reduces CUDA tensors
    dist.all_reduce(t)
    return bool(torch.isfinite(t))


def launch(argv: list[str], nproc: int) -> int:
    """Run `edgerec <argv>` under torchrun with nproc processes on this machine; its exit status."""
    cmd = [sys.executable, "-m", "edgerec.train.torchrun", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "edgerec", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(cmd, env=env)
