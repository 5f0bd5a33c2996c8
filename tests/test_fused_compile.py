"""The fused kernels compiled for a Hopper GPU (sm_90) on this machine, without one.

Triton's interpreter, which runs tests/test_fused.py on a CPU, accepts code that its compiler rejects
(block shapes, constexpr use, dtypes), so each kernel is also compiled here down to a cubin, at the block sizes
and launch options prefit.fused uses. Compiling needs Triton's NVIDIA backend (its bundled ptxas), not a GPU;
it runs in a subprocess because conftest.py puts this process under the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="Triton is not installed (it is on Linux x86-64)")

SCRIPT = textwrap.dedent(
    """
    import sys
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        print(f"SKIP: this Triton cannot compile ahead of time ({e})")
        sys.exit(0)
    from prefit import fused as F
    from prefit.fused import kernels as K

    f32, f64, i64, i32 = "*fp32", "*fp64", "*i64", "*i32"
    KERNELS = [  # (kernel, argument types, constexprs, launch options), as prefit.fused launches them
        *[(K.sincos_bias,
           dict(s_ptr=f32, c_ptr=f32, b_ptr=f32, hi_ptr=f32, lo_ptr=f32, w0="fp32", n="i32", stride="i32",
                width="i32"),
           dict(BLOCK=F.ELEMENTWISE_BLOCK, PRECISE=True, SPLIT=split), dict(enable_fp_fusion=False))
          for split in (False, True)],
        *[(K.cos_grad,
           dict(g_ptr=f32, c_ptr=f32, gb_ptr=f32, hi_ptr=f32, lo_ptr=f32, w0="fp32", pixels="i32", width="i32"),
           dict(BLOCK_P=max(16, 4096 // h), BLOCK_H=h, SPLIT=split), dict(enable_fp_fusion=False))
          for h, split in ((1, False), (8, False), (64, False), (64, True))],
        *[(K.head,
           dict(pred_ptr=f32, b_ptr=f32, target_ptr=f32, grad_ptr=f32, loss_ptr=f32, gb_ptr=f32, snaps_ptr=f32,
                slot_ptr=i32, t_ptr=i64, scale="fp32", pixels="i32", epochs="i32", n_slots="i32"),
           dict(BLOCK_P=p), {}) for p in (1, 1024)],
        *[(K.schedule,
           dict(loss_ptr=f32, lr_ptr=f64, best_ptr=f64, bad_ptr=i64, losses_ptr=f32, lrs_ptr=f64,
                step_size_ptr=f32, powers_ptr=f64, t_ptr=i64, consts_ptr=f64, members="i32", epochs="i32",
                patience="i32"),
           dict(BLOCK=b), dict(num_warps=1)) for b in (1, 1024)],
        *[(K.adam,
           dict(p_ptr=f32, g_ptr=f32, m_ptr=f32, v_ptr=f32, hi_ptr=f32, lo_ptr=f32, step_size_ptr=f32,
                powers_ptr=f64, block_start_ptr=i64, block_tensor_ptr=i32, offsets_ptr=i64, numels_ptr=i64,
                per_member_ptr=i64, one_minus_beta1="fp32", beta2="fp32", one_minus_beta2="fp32", eps="fp32"),
           dict(BLOCK=F.ADAM_BLOCK, SPLIT=split), {}) for split in (False, True)],
        (K.split_tf32, dict(x_ptr=f32, hi_ptr=f32, lo_ptr=f32, n="i32"), dict(BLOCK=F.ELEMENTWISE_BLOCK), {}),
    ]
    for kernel, types, constexprs, options in KERNELS:
        name = kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__
        signature = {**types, **{k: "constexpr" for k in constexprs}}
        try:
            compiled = triton.compile(ASTSource(kernel, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options=options)
        except (TypeError, AttributeError) as e:  # an older compile API
            print(f"SKIP: this Triton's ahead-of-time API differs ({type(e).__name__}: {e})")
            sys.exit(0)
        assert compiled.asm.get("cubin"), name
        print("compiled", name, constexprs, options)
    """
)


def test_every_kernel_compiles_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton's default until 3.10, said so to silence its warning
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and out.startswith("SKIP: "):
        pytest.skip(out.splitlines()[0][6:])
    assert proc.returncode == 0, out[-4000:]
    assert out.count("compiled ") == 13
