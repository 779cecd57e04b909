"""core/speed.py: the allocator setting keeps freed memory, the fused AdamW takes AdamW's step, attention runs on the
math backend for training and on the flash kernel for decoding, and a frozen model's weights kept in bf16 give the
same outputs under autocast."""

from __future__ import annotations

import copy
import subprocess
import sys

import torch
import torch.nn.functional as F
from conftest import ROOT

from core.speed import adamw, autocast_weights, flash_attention, math_attention

# A step's worth of 64 MB tensors, allocated and freed 15 times; the page faults of the last five are counted.
FAULTS = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from core.speed import keep_freed_memory
applied = keep_freed_memory() if {keep} else None
for step in range(15):
    if step == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(16 * 2**20)
    b = a * 2
    c = a + b
    del a, b, c
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(keep: bool) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS.format(root=str(ROOT), keep=keep)], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_large_blocks_are_reused_without_faulting_them_in_again():
    applied, kept = faults(keep=True)
    _, default = faults(keep=False)
    assert applied == "True"
    assert default > 5 * 3 * 16_000  # 64 MB is 16,384 pages of 4 KB, by default unmapped on free and faulted in again
    assert kept < default / 5  # the heap settles after a few steps; then a step faults little or nothing


def test_fused_adamw_takes_the_same_steps_as_adamw():
    torch.manual_seed(0)
    start = torch.randn(50, 7)
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    optimizers = [
        torch.optim.AdamW([params[0]], lr=0.1, weight_decay=0.01),
        adamw([params[1]], lr=0.1, weight_decay=0.01),
    ]
    for _ in range(5):
        grad = torch.randn(50, 7)
        for p, optimizer in zip(params, optimizers):
            p.grad = grad.clone()
            optimizer.step()
    assert not torch.equal(params[0], start)
    torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)


def test_math_attention_replaces_the_flash_kernel_until_a_block_asks_for_it_back():
    q = torch.randn(2, 3, 5, 8, requires_grad=True)
    k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)

    def attend():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        (grad,) = torch.autograd.grad(out.square().sum(), q)
        return out, grad, type(out.grad_fn).__name__

    was = torch.backends.cuda.flash_sdp_enabled()
    try:
        flash = attend()
        assert math_attention()
        math = attend()
        with flash_attention():
            inside = attend()
        after = attend()
    finally:
        torch.backends.cuda.enable_flash_sdp(was)
    assert "Flash" in flash[2] and "Flash" in inside[2]
    assert "Flash" not in math[2] and "Flash" not in after[2]
    torch.testing.assert_close(math[0], flash[0])  # the same attention and gradient, up to rounding
    torch.testing.assert_close(math[1], flash[1])


def test_a_frozen_model_with_bf16_linear_weights_computes_the_same_logits_under_autocast(tiny):
    _, _, model = tiny
    frozen = copy.deepcopy(model).requires_grad_(False)
    cast = autocast_weights(copy.deepcopy(frozen))
    linears = [m for m in cast.modules() if isinstance(m, torch.nn.Linear)]
    embeddings = cast.get_input_embeddings().weight
    assert embeddings.dtype == torch.float32  # the tied LM head shares it and stays fp32 with it
    assert any(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(m.weight.dtype == torch.bfloat16 for m in linears if m.weight is not embeddings)
    ids = torch.randint(5, 250, (3, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = frozen(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected, got = frozen(input_ids=ids).logits, cast(input_ids=ids).logits
    assert not torch.equal(expected.float(), plain)  # autocast changes the logits; the bf16 weights do not
    assert torch.equal(got, expected)
