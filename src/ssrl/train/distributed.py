"""Process-group setup, collectives and global-batch BatchNorm.

A training script runs either as ``python script.py`` (one process, no process
group: every helper below then works on the local data alone) or under
``torchrun --nproc_per_node N script.py`` (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` and the rendezvous variables set): NCCL on GPUs, gloo on CPU,
``env://`` initialisation.

The gather helpers return the concatenation over ranks in rank order and may be
called with different amounts of data on each rank; every rank must call them
(they are collectives).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files and logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(device: str = "auto") -> DistEnv:
    """Set up this process from the torchrun environment.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    Without ``WORLD_SIZE`` in the environment, no process group is created.
    With it, rank ``r`` uses ``cuda:LOCAL_RANK`` (NCCL) or the CPU (gloo).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device: expected auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "WORLD_SIZE" not in os.environ:
        return DistEnv(device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"))
    world_size, rank = _env_int("WORLD_SIZE"), _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            world_size=world_size,
            rank=rank,
            device_id=dev if use_cuda else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(env: DistEnv) -> None:
    """Destroy the process group (if this process created one)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """Tensors for collectives live here: the current CUDA device for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (a new tensor on the input's device)."""
    if not _active():
        return tensor.clone()
    out = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor on the input's device)."""
    if not _active():
        return tensor.clone()
    return all_reduce_sum(tensor) / dist.get_world_size()


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` along dim 0 over ranks, in rank order.

    The first dimension may differ between ranks (others must agree); the
    result is on the input's device, e.g. ``(n_0 + n_1 + ..., *rest)``.
    """
    if not _active():
        return tensor.clone()
    world = dist.get_world_size()
    dev = _comm_device()
    local = tensor.detach().to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=dev))
    counts = [int(s.item()) for s in sizes]
    biggest = max(counts)
    padded = torch.zeros((biggest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(tensor.device)


def all_gather_array(array: np.ndarray) -> np.ndarray:
    """:func:`all_gather_tensor` for a numeric numpy array (dim 0 may differ between ranks)."""
    array = np.asarray(array)
    if not _active():
        return array.copy()
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"all_gather_array: numeric arrays only, got dtype {array.dtype} (use all_gather_objects for strings)"
        )
    return all_gather_tensor(torch.from_numpy(np.ascontiguousarray(array))).numpy()


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _DifferentiableAllReduce(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of the output gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all ranks.

    A drop-in replacement for ``nn.BatchNorm{1,2,3}d`` (same parameters, buffers
    and state-dict keys) for the CPU/gloo path, where ``nn.SyncBatchNorm`` is not
    available: the per-channel mean and (biased) variance are computed from sums
    all-reduced over ranks (two passes, for accuracy), with gradients flowing
    through the reduction, so N ranks with B items each train exactly like one
    process with N*B items. Input ``(batch, channels, *)``. Outside training or
    without a process group it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (batch, channels, ...), got shape {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and _active()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        local_count = input.new_tensor([input.numel() // input.shape[1]], dtype=input.dtype)
        sums = _DifferentiableAllReduce.apply(torch.cat([input.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = input - mean.view(shape)
        var = _DifferentiableAllReduce.apply(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        return out


def convert_sync_batchnorm(module: nn.Module, env: DistEnv) -> nn.Module:
    """Make every BatchNorm of ``module`` use global-batch statistics under DDP.

    CUDA: ``nn.SyncBatchNorm``; CPU: :class:`GlobalBatchNorm`. Parameters and
    buffers are kept (same tensors, same names). Returns ``module`` unchanged in
    a single process.
    """
    if not env.distributed:
        return module
    if env.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new_child = _to_global_bn(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
