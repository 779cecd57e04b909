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
