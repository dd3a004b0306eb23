"""Triton box kernels against the PyTorch reference in xvlm_edge.concepts, forward and backward.

By default the kernels run in Triton's CPU interpreter: TRITON_INTERPRET must be set before the kernels
are decorated (and before torch._dynamo imports triton), so it is set here, above every other import.
On a GPU machine run the compiled kernels on CUDA, bf16 included, with

    TRITON_INTERPRET=0 pytest tests/test_kernels.py          # add -m gpu for the GPU-only tests

Tolerances. fp32: atol = rtol = 1e-5 (IEEE fp32 dots; the kernel sums in a different order than the
reference). fp16: the kernel runs on the fp16 inputs and is compared with the reference run in fp32 on
the same (upcast) values, so the tolerance measures the kernel alone: atol = rtol = 2e-3, which covers
the final rounding to fp16 (2^-11 relative) and P, dS rounded to fp16 as dot operands. bf16 (GPU only:
the interpreter's bf16 dots are wrong): atol = rtol = 2e-2 for 2^-8 relative rounding.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install 'xvlm-edge[triton]')")

import torch

from xvlm_edge import concepts
from xvlm_edge.errors import BackendUnavailableError, InputError

INTERPRET = os.environ["TRITON_INTERPRET"].strip().lower() in ("1", "true", "on")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET=0 runs compiled kernels, which need a CUDA device", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"

# triton 3.9 warns on every compile that its FP-fusion default will change; it is not ours to act on.
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset:UserWarning")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _load_kernels():
    """xvlm_edge.kernels decorated under the mode chosen above, even if something imported it earlier."""
    names = ("xvlm_edge.kernels.box_pool", "xvlm_edge.kernels.box_cross_attention", "xvlm_edge.kernels._autotune")
    module = sys.modules.get("xvlm_edge.kernels.box_pool")
    if module is not None and module._INTERPRETED != INTERPRET:
        for name in (*names, "xvlm_edge.kernels"):
            sys.modules.pop(name, None)
    return importlib.import_module("xvlm_edge.kernels")


kernels = _load_kernels()
attention_module = importlib.import_module("xvlm_edge.kernels.box_cross_attention")


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """concepts.* is the oracle here: force its PyTorch path (on CUDA it would dispatch to the kernels)."""
    monkeypatch.setenv(concepts.BACKEND_ENV, "torch")


def _check_attention(q, k, v, idx, mask):
    """Kernel vs reference (concepts.box_cross_attention in fp32): output, dq, dk, dv.

    Returns the kernel's (out, dq, dk, dv).
    """
    tol = TOL[q.dtype]
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = kernels.box_cross_attention(*leaves, idx, mask)
    ref = concepts.box_cross_attention(*ref_leaves, idx, mask, pooled=True)
    assert out.dtype == q.dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)

    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0)).to(ref.device)
    grads = torch.autograd.grad(out, leaves, grad.to(q.dtype))
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert got.dtype == q.dtype, name
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")
    return (out, *grads)


def _random_masks(num_boxes: int, num_patches: int, generator: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(num_boxes, num_patches, generator=generator) < 0.4).long()
    mask[:, 0] = 1  # entry 0 (the [CLS] patch) is always on, as in box_to_patch_mask
    return mask


def _grid_masks() -> torch.Tensor:
    """box_to_patch_mask on a 5x5 grid (N = 26): one-patch corner boxes, border strips, the full image."""
    boxes = [
        [0.0, 0.0, 10.0, 10.0],  # one patch, top-left corner
        [40.0, 40.0, 10.0, 10.0],  # one patch, bottom-right corner
        [0.0, 45.0, 50.0, 5.0],  # bottom border strip
        [47.0, 0.0, 3.0, 50.0],  # right border strip
        [0.0, 0.0, 50.0, 50.0],  # the full image
        [12.0, 18.0, 17.0, 9.0],  # interior, not aligned to patches
    ]
    return concepts.box_to_patch_mask(torch.tensor(boxes), image_res=50, patch_size=10)


def _inputs(num_boxes, num_images, heads, rows, patches, head_dim, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(num_boxes, heads, rows, head_dim, generator=g)
    k = torch.randn(num_images, heads, patches, head_dim, generator=g)
    v = torch.randn(num_images, heads, patches, head_dim, generator=g)
    return [t.to(device=DEVICE, dtype=dtype) for t in (q, k, v)], g


DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_ragged_boxes_and_an_image_without_boxes(dtype: torch.dtype) -> None:
    """T = 19, N = 23 (not powers of two, several tiles); 2 and 3 boxes on images 0 and 2, none on image 1."""
    (q, k, v), g = _inputs(5, 3, 2, 19, 23, 16, dtype)
    idx = torch.tensor([0, 2, 0, 2, 2], device=DEVICE)
    mask = _random_masks(5, 23, g)
    mask[3] = 0
    mask[3, 22] = 1  # a one-patch box on the last (border) patch, not even [CLS]
    _, _, dk, dv = _check_attention(q, k, v, idx, mask.to(DEVICE))
    assert not dk[1].any() and not dv[1].any()  # the image without boxes gets an exact zero gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_grid_boxes(dtype: torch.dtype) -> None:
    """Masks from the official floor/ceil rule: one-patch corners, border strips, the full image."""
    mask = _grid_masks()  # (6, 26) int64
    (q, k, v), _ = _inputs(6, 2, 2, 13, 26, 32, dtype, seed=1)
    idx = torch.tensor([1, 0, 1, 1, 0, 0], device=DEVICE)
    _check_attention(q, k, v, idx, mask.to(DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_full_image_with_identity_index(dtype: torch.dtype) -> None:
    """idx None (row k reads image k) with all-ones masks: the full-image case is the same kernel; d = 64."""
    (q, k, v), _ = _inputs(3, 3, 1, 7, 10, 64, dtype, seed=2)
    mask = torch.ones(3, 10, dtype=torch.bool, device=DEVICE)
    _check_attention(q, k, v, None, mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_none_index_groups_rows_by_image(dtype: torch.dtype) -> None:
    """idx None with 6 rows over 2 images: kernel and reference both read rows 0-2 on image 0, 3-5 on image 1."""
    (q, k, v), g = _inputs(6, 2, 2, 5, 11, 16, dtype, seed=10)
    mask = _random_masks(6, 11, g).to(DEVICE)
    got = _check_attention(q, k, v, None, mask)
    explicit = torch.tensor([0, 0, 0, 1, 1, 1], device=DEVICE)
    for a, b in zip(got, _check_attention(q, k, v, explicit, mask)):
        assert torch.equal(a, b)  # None is exactly the grouped index, not merely close to it


def test_none_index_that_does_not_group_is_refused_alike() -> None:
    """5 rows over 2 images cannot be grouped: the kernel says ValueError, concepts (either path) InputError."""
    (q, k, v), _ = _inputs(5, 2, 1, 3, 4, 16, torch.float32)
    mask = torch.ones(5, 4, device=DEVICE)
    message = "idx_to_group_img=None groups the query rows by image, but 5 rows cannot be split evenly over 2"
    with pytest.raises(ValueError, match=message) as kernel_error:
        kernels.box_cross_attention(q, k, v, None, mask)
    assert type(kernel_error.value) is ValueError
    with pytest.raises(InputError, match=message):
        concepts.box_cross_attention(q, k, v, None, mask, pooled=True)  # the reference (fixture forces torch)
    with pytest.raises(InputError, match=message):
        concepts.box_cross_attention(q, k, v, None, mask, pooled=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_many_boxes_on_one_image_is_deterministic(dtype: torch.dtype) -> None:
    """9 texts on 1 image split dk/dv over 2 programs (rerank layout); two backward passes agree bitwise."""
    assert attention_module._splits(9, 1) == 2  # the fp32-partials path is the one under test
    (q, k, v), g = _inputs(9, 1, 1, 5, 17, 16, dtype, seed=3)
    idx = torch.zeros(9, dtype=torch.long, device=DEVICE)
    mask = _random_masks(9, 17, g).to(DEVICE)
    first = _check_attention(q, k, v, idx, mask)
    again = _check_attention(q, k, v, idx, mask)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128])
def test_attention_head_dims(head_dim: int) -> None:
    (q, k, v), g = _inputs(3, 2, 1, 3, 6, head_dim, torch.float32, seed=head_dim)
    idx = torch.tensor([1, 1, 0], device=DEVICE)
    _check_attention(q, k, v, idx, _random_masks(3, 6, g).to(DEVICE))


def test_attention_accepts_strided_views() -> None:
    """q as the model builds it, (K, T, H, d) viewed as (K, H, T, d); mask as float 0/1; idx int32."""
    (q, k, v), g = _inputs(4, 2, 2, 6, 9, 16, torch.float32, seed=4)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q.is_contiguous()
    idx = torch.tensor([0, 1, 1, 0], dtype=torch.int32, device=DEVICE)
    _check_attention(q, k, v, idx, _random_masks(4, 9, g).float().to(DEVICE))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_region_pretraining_layout(dtype: torch.dtype) -> None:
    """The X-VLM layout at reduced width: N = 1 + 144, T = 40, d = 64."""
    (q, k, v), g = _inputs(4, 2, 2, 40, 145, 64, dtype, seed=5)
    idx = torch.tensor([0, 1, 1, 0], device=DEVICE)
    _check_attention(q, k, v, idx, _random_masks(4, 145, g).to(DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_pool_matches_reference(dtype: torch.dtype) -> None:
    """N = 37 and D = 40 (ragged tiles); 3 boxes on image 2, one-patch and full boxes, image 0 without boxes."""
    g = torch.Generator().manual_seed(6)
    patches = torch.randn(3, 37, 40, generator=g).to(device=DEVICE, dtype=dtype)
    idx = torch.tensor([2, 1, 2, 2], device=DEVICE)
    mask = _random_masks(4, 37, g)
    mask[1] = 1  # the full image
    mask[2] = 0
    mask[2, 36] = 1  # one patch on the border
    mask = mask.to(DEVICE)
    leaf = patches.detach().requires_grad_()
    ref_leaf = patches.detach().float().requires_grad_()
    out = kernels.box_pool(leaf, idx, mask)
    ref = concepts.box_pool(ref_leaf, idx, mask)
    tol = TOL[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    grad = torch.randn(ref.shape, generator=g).to(DEVICE)
    (got,) = torch.autograd.grad(out, leaf, grad.to(dtype))
    (want,) = torch.autograd.grad(ref, ref_leaf, grad)
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
    assert not got[0].any()


def test_concepts_routes_to_kernels_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """XVLM_EDGE_CONCEPTS=triton sends concepts.box_* to the kernels (pooled attention only)."""
    calls = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(kernels, "box_cross_attention", spy(kernels.box_cross_attention))
    monkeypatch.setattr(kernels, "box_pool", spy(kernels.box_pool))
    (q, k, v), g = _inputs(3, 2, 1, 4, 7, 16, torch.float32, seed=7)
    idx = torch.tensor([1, 0, 1], device=DEVICE)
    mask = _random_masks(3, 7, g).to(DEVICE)
    expected = concepts.box_cross_attention(q, k, v, idx, mask, pooled=True)
    expected_pool = concepts.box_pool(k[:, 0], idx, mask)
    assert calls == []

    monkeypatch.setenv(concepts.BACKEND_ENV, "triton")
    out = concepts.box_cross_attention(q, k, v, idx, mask, pooled=True)
    pooled = concepts.box_pool(k[:, 0], idx, mask)
    concepts.box_cross_attention(q, k, v, idx, mask, pooled=False)  # CLIP / decoder layout: no kernel
    assert calls == ["box_cross_attention", "box_pool"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected_pool, atol=1e-5, rtol=1e-5)


def test_package_imports_without_triton() -> None:
    """With triton missing, xvlm_edge.kernels imports empty and forcing the kernels names what is missing."""
    code = (
        "import os, sys, torch\n"
        "sys.modules['triton'] = None\n"
        "import xvlm_edge.kernels as k\n"
        "from xvlm_edge import concepts\n"
        "from xvlm_edge.errors import BackendUnavailableError\n"
        "assert k.__all__ == [] and not hasattr(k, 'box_cross_attention'), k.__all__\n"
        "os.environ[concepts.BACKEND_ENV] = 'triton'\n"
        "try:\n"
        "    concepts.box_pool(torch.ones(1, 2, 3), torch.zeros(1, dtype=torch.long), torch.ones(1, 2))\n"
        "except BackendUnavailableError as e:\n"
        "    print('raised', e.hint)\n"
    )
    env = {key: val for key, val in os.environ.items() if key != concepts.BACKEND_ENV}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("raised pip install triton")


def _valid():
    (q, k, v), _ = _inputs(2, 1, 1, 3, 4, 16, torch.float32)
    return {"q": q, "k": k, "v": v, "idx": torch.zeros(2, dtype=torch.long), "mask": torch.ones(2, 4)}


BAD_ATTENTION_INPUTS = {
    "q_not_4d": lambda a: {**a, "q": a["q"][0]},
    "heads_differ": lambda a: {**a, "k": a["k"].expand(1, 2, 4, 16), "v": a["v"].expand(1, 2, 4, 16)},
    "head_dim_24": lambda a: {**a, "q": a["q"][..., :12].repeat(1, 1, 1, 2), "k": a["k"][..., :12].repeat(1, 1, 1, 2),
                              "v": a["v"][..., :12].repeat(1, 1, 1, 2)},
    "mixed_dtypes": lambda a: {**a, "k": a["k"].half()},
    "int_dtype": lambda a: {**a, "q": a["q"].long(), "k": a["k"].long(), "v": a["v"].long()},
    "mask_shape": lambda a: {**a, "mask": a["mask"][:, :3]},
    "idx_shape": lambda a: {**a, "idx": a["idx"][:1]},
    "idx_float": lambda a: {**a, "idx": a["idx"].float()},
    "idx_out_of_range": lambda a: {**a, "idx": torch.tensor([0, 1])},
    "idx_negative": lambda a: {**a, "idx": torch.tensor([0, -1])},
    "idx_none_rows_not_grouped": lambda a: {**a, "k": a["k"].expand(3, 1, 4, 16), "v": a["v"].expand(3, 1, 4, 16),
                                            "idx": None},
    "empty_box": lambda a: {**a, "mask": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])},
    "empty_rows": lambda a: {**a, "q": a["q"][:, :, :0]},
}


def _bad_attention_args(case: str) -> tuple:
    args = BAD_ATTENTION_INPUTS[case](_valid())
    args = {key: (t.to(DEVICE) if isinstance(t, torch.Tensor) else t) for key, t in args.items()}
    return args["q"], args["k"], args["v"], args["idx"], args["mask"]


@pytest.mark.parametrize("case", BAD_ATTENTION_INPUTS)
def test_attention_rejects_bad_input(case: str) -> None:
    """The kernel wrapper raises a plain ValueError naming the op: kernels/ knows nothing of xvlm_edge.errors."""
    with pytest.raises(ValueError, match="^box_cross_attention: ") as error:
        kernels.box_cross_attention(*_bad_attention_args(case))
    assert type(error.value) is ValueError


@pytest.mark.parametrize("case", BAD_ATTENTION_INPUTS)
def test_concepts_translates_bad_attention_input(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through concepts (the boundary) the same message arrives as InputError, chained to the kernel's error."""
    args = _bad_attention_args(case)
    with pytest.raises(ValueError, match="box_cross_attention:") as kernel_error:
        kernels.box_cross_attention(*args)
    monkeypatch.setenv(concepts.BACKEND_ENV, "triton")
    with pytest.raises(InputError) as error:
        concepts.box_cross_attention(*args, pooled=True)
    assert str(error.value) == str(kernel_error.value)
    assert type(error.value.__cause__) is ValueError


BAD_POOL_INPUTS = {
    "patches_2d": lambda p, i, m: (p[0], i, m),
    "patches_int": lambda p, i, m: (p.long(), i, m),
    "idx_2d": lambda p, i, m: (p, i[None], m),
    "mask_shape": lambda p, i, m: (p, i, m[:, 1:]),
    "idx_out_of_range": lambda p, i, m: (p, i + 2, m),
    "empty_box": lambda p, i, m: (p, i, m * 0),
}


def _bad_pool_args(case: str) -> tuple:
    patches = torch.randn(2, 5, 8, device=DEVICE)
    idx = torch.tensor([0, 1, 1], device=DEVICE)
    mask = torch.ones(3, 5, dtype=torch.bool, device=DEVICE)
    return BAD_POOL_INPUTS[case](patches, idx, mask)


@pytest.mark.parametrize("case", BAD_POOL_INPUTS)
def test_box_pool_rejects_bad_input(case: str) -> None:
    with pytest.raises(ValueError, match="^box_pool: ") as error:
        kernels.box_pool(*_bad_pool_args(case))
    assert type(error.value) is ValueError


@pytest.mark.parametrize("case", BAD_POOL_INPUTS)
def test_concepts_translates_bad_pool_input(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _bad_pool_args(case)
    with pytest.raises(ValueError, match="box_pool:") as kernel_error:
        kernels.box_pool(*args)
    monkeypatch.setenv(concepts.BACKEND_ENV, "triton")
    with pytest.raises(InputError) as error:
        concepts.box_pool(*args)
    assert str(error.value) == str(kernel_error.value)
    assert type(error.value.__cause__) is ValueError


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled kernels cannot read CPU tensors: a RuntimeError before any launch, BackendUnavailableError via concepts."""
    args = _valid()
    args = {key: t.cpu() for key, t in args.items()}
    attention = (args["q"], args["k"], args["v"], args["idx"], args["mask"])
    pool = (args["k"][:, 0], args["idx"], args["mask"])
    monkeypatch.setattr(attention_module, "_INTERPRETED", False)
    monkeypatch.setattr(importlib.import_module("xvlm_edge.kernels.box_pool"), "_INTERPRETED", False)
    with pytest.raises(RuntimeError, match="needs CUDA tensors") as error:
        kernels.box_cross_attention(*attention)
    assert type(error.value) is RuntimeError
    with pytest.raises(RuntimeError, match="needs CUDA tensors") as error:
        kernels.box_pool(*pool)
    assert type(error.value) is RuntimeError

    monkeypatch.setenv(concepts.BACKEND_ENV, "triton")
    with pytest.raises(BackendUnavailableError, match="box_cross_attention: .*needs CUDA tensors") as error:
        concepts.box_cross_attention(*attention, pooled=True)
    assert type(error.value.__cause__) is RuntimeError and concepts.BACKEND_ENV in error.value.hint
    with pytest.raises(BackendUnavailableError, match="box_pool: .*needs CUDA tensors") as error:
        concepts.box_pool(*pool)
    assert type(error.value.__cause__) is RuntimeError


gpu_only = pytest.mark.skipif(
    INTERPRET or not torch.cuda.is_available(),
    reason="needs CUDA and compiled kernels: TRITON_INTERPRET=0 pytest -m gpu tests/test_kernels.py",
)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_attention_bf16_on_gpu(head_dim: int) -> None:
    """bf16 against the fp32 reference on the same values; the interpreter's bf16 dots cannot be trusted."""
    (q, k, v), g = _inputs(6, 2, 3, 40, 145, head_dim, torch.bfloat16, seed=8)
    idx = torch.tensor([0, 1, 1, 0, 1, 1], device=DEVICE)
    _check_attention(q, k, v, idx, _random_masks(6, 145, g).to(DEVICE))


@pytest.mark.gpu
@gpu_only
def test_box_pool_bf16_on_gpu() -> None:
    g = torch.Generator().manual_seed(9)
    patches = torch.randn(4, 145, 768, generator=g).to(device=DEVICE, dtype=torch.bfloat16)
    idx = torch.tensor([3, 0, 3, 1, 1], device=DEVICE)
    mask = _random_masks(5, 145, g).to(DEVICE)
    leaf = patches.detach().requires_grad_()
    ref_leaf = patches.detach().float().requires_grad_()
    out = kernels.box_pool(leaf, idx, mask)
    ref = concepts.box_pool(ref_leaf, idx, mask)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    grad = torch.randn(ref.shape, generator=g).to(DEVICE)
    (got,) = torch.autograd.grad(out, leaf, grad.bfloat16())
    (want,) = torch.autograd.grad(ref, ref_leaf, grad)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)



#: Run in a fresh interpreter with TRITON_INTERPRET=0: once interpreted kernels have run, the interpreter's
#: patches to triton.language stay in this process and the compiler cannot be used here.
_COMPILE_FOR_HOPPER = """
import importlib, inspect, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

dtype = sys.argv[1]
attention = importlib.import_module("xvlm_edge.kernels.box_cross_attention")
pool = importlib.import_module("xvlm_edge.kernels.box_pool")
tiles = {"HEAD_DIM": 64, "DOT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
         "BLOCK_T": 32, "BLOCK_N": 32}
cases = [(k, tiles) for k in (attention._box_attn_fwd_kernel, attention._box_attn_bwd_dq_kernel,
                              attention._box_attn_bwd_dkdv_kernel)]
cases += [(k, {"BLOCK_N": 32, "BLOCK_D": 128}) for k in (pool._box_pool_fwd_kernel, pool._box_pool_bwd_kernel)]
data = {"Q", "K", "V", "Out", "dOut", "dQ", "dK", "dV", "Patches", "dPatches"}
types = {**dict.fromkeys(("Idx", "BoxOrder", "ImgStart"), "*i64"), "Mask": "*i8",
         **dict.fromkeys(("Count", "Lse", "Delta", "PPool", "dSPool"), "*fp32"), "sm_scale": "fp32"}
for kernel, constexprs in cases:
    fn = kernel
    while not inspect.isfunction(fn):  # autotuner -> JITFunction -> the Python function
        fn = fn.fn
    jit_fn = triton.runtime.JITFunction(fn)
    signature = {name: "constexpr" if name in constexprs else f"*{dtype}" if name in data else types.get(name, "i32")
                 for name in jit_fn.arg_names}
    compiled = triton.compile(ASTSource(jit_fn, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "num_stages": 2})
    assert compiled.asm["cubin"], jit_fn.__name__
    print("compiled", jit_fn.__name__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_kernels_compile_for_hopper(dtype: str) -> None:
    """Lower every kernel to an sm_90 cubin with Triton's bundled ptxas: no GPU needed.

    The interpreter runs NumPy, so it cannot see what only the compiler rejects (dot operand types and
    shapes, loop-carried types, layouts); this catches those on a CPU-only machine.
    """
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_HOPPER, dtype], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 5
