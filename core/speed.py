"""Process-wide settings that buy CPU time without changing what is computed.

`keep_freed_memory()` stops glibc from handing large blocks back to the kernel. By default every block over 32 MB
(a [16, 20, 49k] fp32 logits tensor is 63 MB) is mmap'ed on allocation and unmapped on free, so each training step
faults its full-vocabulary tensors in afresh, page by page: measured on a 2-core AMD EPYC (AVX-512 BF16), one
Quark step at the mini shapes took 360,000 minor page faults and 1.15 s of kernel time, 4.5 s in all; with freed
memory kept in the heap, 12,000 faults, 0.16 s and 3.5 s (workflow/scripts/bench.py measures it side by side).
The price is a resident size that stays at its peak instead of shrinking between steps.

`math_attention()` turns off SDPA's flash kernel, process-wide, on a machine without CUDA; `flash_attention()` turns
it back on for a block. On CPU the flash kernel's backward is slow at the suite's shapes: one Quark step at the mini
shapes (16 x 53 tokens, bf16 autocast) took 2.4-2.9 s in its backward with flash and 1.1-1.6 s with the math
backend (plain matmuls and softmax), while decoding is faster with flash (278 against 203 tokens/s at batch 64;
2-core Intel Xeon with AMX, interleaved runs). So training runs with math attention and the sampler
(core/sampling.py) decodes with flash. Both compute the same attention, up to rounding.

`autocast_weights()` stores a frozen model's linear weights in bf16 for a job that runs it only under bf16 autocast
(Quark's and PPO's reference). Autocast caches its bf16 casts only for weights that require grad, so a frozen model
cast all its weights afresh at every forward pass: on a 2-core Intel Xeon with AMX, the reference's forward in a
Quark step at the mini shapes took 0.37-0.40 s with the casts and 0.32-0.34 s without. Autocast casts a linear
layer's input and weight to bf16 before the matmul, so the outputs are bit-identical (tests/core/test_speed.py).
The embedding matrix stays fp32: an LM head tied to it shares the weight, and the embeddings feed the fp32
residual stream.

`adamw()` is torch's fused AdamW: one kernel over all parameters instead of a dozen elementwise passes each,
0.29 s -> 0.05 s per step for the 135M-parameter model on the same machine; the same update up to rounding.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterable, Iterator

import torch

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # mallopt parameters, <malloc.h>


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc only; elsewhere a no-op). True if applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 1 << 28}
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def autocast_weights(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its `nn.Linear` weights and biases in bf16, but for any that share the input embeddings' tensor;
    for a frozen model run only under bf16 autocast, which computes the same outputs from them, bit for bit."""
    embeddings = model.get_input_embeddings().weight
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embeddings:
            module.to(torch.bfloat16)
    return model


def adamw(params: Iterable[torch.nn.Parameter], **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW with its fused kernel (CPU and CUDA)."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def math_attention() -> bool:
    """Without CUDA, SDPA's math backend instead of its flash kernel from now on. True if applied."""
    if torch.cuda.is_available():
        return False
    torch.backends.cuda.enable_flash_sdp(False)  # despite its name, the flag CPU dispatch reads too
    return True


@contextlib.contextmanager
def flash_attention() -> Iterator[None]:
    """SDPA's flash kernel allowed inside the block (the default, unless `math_attention()` turned it off)."""
    was = torch.backends.cuda.flash_sdp_enabled()
    torch.backends.cuda.enable_flash_sdp(True)
    try:
        yield
    finally:
        torch.backends.cuda.enable_flash_sdp(was)
