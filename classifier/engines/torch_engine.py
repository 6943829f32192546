"""PyTorch inference: uint8 image batches in, class probabilities out (the serving network does the rest).

CPU: float32 eager, the fallback engine. GPU: half precision (bf16 where supported), channels_last,
pinned non-blocking copies, and optionally ``torch.compile`` on a few fixed batch sizes: each batch
is padded up to the next one, so adaptive batching's varying sizes never trigger a recompile.
"""

from __future__ import annotations

import numpy as np
import torch

from classifier.engines import BuildRequest
from classifier.network import ServingNet
from classifier.store import LoadedModel, load_model


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes compiled ahead: powers of two below ``max_batch_size``, then it (1, 2, 4, 8, 16)."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``n`` images; ValueError above the largest."""
    for size in buckets:
        if n <= size:
            return size
    raise ValueError(f"a batch of {n} is larger than the largest compiled size {buckets[-1]}")


def pad_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``batch`` [N, ...] followed by zero images up to ``size`` rows."""
    if len(batch) == size:
        return batch
    return torch.cat([batch, batch.new_zeros((size - len(batch), *batch.shape[1:]))])


def build(request: BuildRequest) -> TorchEngine:
    compile_max_batch = request.compile_max_batch if request.device.type == "cuda" else 0
    return TorchEngine(
        load_model(request.model.tag),
        request.device.to_torch(),
        threads=request.threads,
        compile_max_batch=compile_max_batch,
    )


class TorchEngine:
    """Eager (or compiled) PyTorch in inference mode with channels_last.

    ``threads`` sets the CPU intra-op threads (the worker's share of the cores), so several workers
    do not oversubscribe the cores. ``compile_max_batch`` (GPU) compiles the batch sizes of
    ``batch_buckets`` for it; 0 runs eagerly.
    """

    def __init__(
        self, loaded: LoadedModel, device: torch.device, *, threads: int = 1, compile_max_batch: int = 0
    ) -> None:
        self.name = "torch"
        self.contract = loaded.contract
        self.torch_device = device
        self.device = device.type
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
            torch.set_num_threads(threads)
        self.precision = str(dtype).removeprefix("torch.")  # the OOD score's scale is looked up per precision
        network = ServingNet(loaded.network, loaded.contract).to(device).eval().to_precision(dtype)
        self.buckets = batch_buckets(compile_max_batch) if compile_max_batch else None
        if self.buckets:
            # One compiled graph per bucket: more buckets than Dynamo's recompile limit would fall back to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(self.buckets) + 1)
        self.network = torch.compile(network, dynamic=False) if self.buckets else network

    @torch.inference_mode()
    def predict(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 [N, 3, S, S] (numpy, or a tensor already on the device) -> float32 [N, contract.output_width]."""
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        n = len(x)
        if self.buckets:
            x = pad_batch(x, bucket_for(n, self.buckets))
        if x.device.type == "cpu" and self.torch_device.type == "cuda":
            x = x.pin_memory().to(self.torch_device, non_blocking=True)
        else:  # already on a device (batched JPEG decoding), or CPU to CPU: a no-op
            x = x.to(self.torch_device)
        return self.network(x.contiguous(memory_format=torch.channels_last))[:n].cpu().numpy()

    def warm_up(self, batch_size: int = 1) -> None:
        """Run every compiled batch size once (or one batch), so no request pays for compilation."""
        size = self.contract.image_size
        for n in self.buckets or (batch_size,):
            self.predict(np.zeros((n, 3, size, size), dtype=np.uint8))
