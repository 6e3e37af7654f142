"""The fp32 CPU products through oneDNN (llmkit/model/cpu_gemm.py): PyTorch's values to fp32
rounding, the same gradients, and the per-row, per-thread bits the per-sequence gradients need."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from llmkit.model import cpu_gemm
from llmkit.model.sequence_grads import MIN_ROWS


@pytest.fixture
def onednn_products(product_switch):
    """oneDNN's products for the test, whichever the platform's default (auto: oneDNN with AVX-512)."""
    product_switch("onednn")


def onednn(test):
    """A test of oneDNN's products: run with them on wherever PyTorch has them (x86)."""
    return pytest.mark.skipif(not cpu_gemm._AVAILABLE, reason="oneDNN's products are used on x86 CPUs with PyTorch's oneDNN only")(
        pytest.mark.usefixtures("onednn_products")(test))

SHAPES = [(256, 768), (256, 1024), (1024, 256), (384, 1152), (1536, 384), (128, 4096)]  # presets' (in, out) products


@onednn
def test_products_go_through_onednn_and_equal_pytorchs_to_rounding():
    torch.manual_seed(0)
    for inputs, outputs in SHAPES:
        x, w, b = torch.randn(300, inputs), torch.randn(outputs, inputs), torch.randn(outputs)
        assert cpu_gemm.takes(x, w.t())
        exact = F.linear(x.double(), w.double(), b.double())
        # fp32 sums' worst-case rounding, (inputs + 1) * 2^-24 * sum |x w| per entry: fp32 throughout
        # (the reduced-precision modes, bf16 or tf32 inputs, are off by orders of magnitude more)
        bound = (inputs + 1) * 2.0**-24 * (x.double().abs() @ w.double().abs().t() + b.double().abs())
        assert ((cpu_gemm.linear(x, w, b) - exact).abs() <= bound).all()
        assert ((cpu_gemm.matmul(x, w.t()) - exact + b.double()).abs() <= bound + 1e-6).all()
    x = torch.randn(2, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own (oneDNN bf16) path, its dtype
        assert not cpu_gemm.takes(x, x) and cpu_gemm.linear(x, torch.randn(3, 8)).dtype == torch.bfloat16
    assert not cpu_gemm.takes(x.double(), x.double())


@pytest.mark.parametrize("products", ["auto", "onednn", "mkl"])
def test_a_rows_bits_do_not_depend_on_the_rows_beside_it_or_on_the_threads(products, product_switch):
    """From MIN_ROWS rows on, for the library auto picks here and for both where auto may pick either
    (AMD: oneDNN with AVX-512, MKL with AVX2 only): the per-sequence gradients rest on it."""
    if products == "onednn" and not cpu_gemm._AVAILABLE:
        pytest.skip("oneDNN's products are used on x86 CPUs with PyTorch's oneDNN only")
    if products == "mkl" and cpu_gemm._X86 and not cpu_gemm._amd():
        pytest.skip("on Intel CPUs MKL's row bits depend on the rows beside it, and auto never picks it there")
    product_switch(products)
    if products != "auto":
        assert cpu_gemm.library() == ("onednn" if products == "onednn" else "pytorch")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for inputs, outputs in SHAPES:
            x, w, b = torch.randn(2048, inputs), torch.randn(outputs, inputs), torch.randn(outputs)
            torch.set_num_threads(2)
            full = cpu_gemm.linear(x, w, b)
            for rows in (MIN_ROWS, 17, 100, 256, 1000):
                assert torch.equal(cpu_gemm.linear(x[:rows].clone(), w, b), full[:rows]), (inputs, outputs, rows)
            # a weight gradient's product (left^T right over a run's rows), as the sequence tree makes it
            grad = torch.randn(1024, outputs)
            weight_grad = cpu_gemm.matmul(grad.t(), x[:1024])
            torch.set_num_threads(1)
            assert torch.equal(cpu_gemm.linear(x, w, b), full)
            assert torch.equal(cpu_gemm.matmul(grad.t(), x[:1024]), weight_grad)
    finally:
        torch.set_num_threads(threads)


@onednn
def test_a_weight_gradient_made_transposed_has_the_same_bits():
    """sequence_tree and fused_loss make a weight gradient left^T right as (right^T left)^T where
    that lets oneDNN copy the smaller operand into rows: each element must be the same sum, in the
    same order, whichever operand it is (the presets' products over a run of 4 x 256 tokens, and a
    short sequence's 16 padded rows against the head)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for inputs, outputs in [*SHAPES, (256, 4096), (768, 50304)]:
            for tokens in (1024, 256, MIN_ROWS):
                left, right = torch.randn(tokens, outputs), torch.randn(tokens, inputs)
                torch.set_num_threads(2)
                direct = cpu_gemm.matmul(left.t(), right)
                for count in (2, 1):  # (one thread a process under --nproc)
                    torch.set_num_threads(count)
                    assert torch.equal(cpu_gemm.matmul(right.t(), left).t(), direct), (inputs, outputs, tokens, count)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("amd, avx512, expected", [(True, True, "onednn"), (True, False, "pytorch"),
                                                   (False, True, "onednn"), (False, False, "onednn")])
def test_auto_takes_mkl_only_on_amds_avx2_cpus(amd, avx512, expected, product_switch, monkeypatch):
    if not cpu_gemm._AVAILABLE:
        pytest.skip("oneDNN's products are used on x86 CPUs with PyTorch's oneDNN only")
    monkeypatch.setattr(cpu_gemm, "_amd", lambda: amd)
    monkeypatch.setattr(cpu_gemm, "_avx512", lambda: avx512)
    product_switch("auto")
    assert cpu_gemm.library() == expected


@pytest.mark.skipif(not cpu_gemm._X86, reason="one-row products take their own path on x86 CPUs")
@pytest.mark.parametrize("to_openblas", [False, True], ids=["pytorch-one-thread", "openblas"])
def test_one_row_without_gradients_has_the_same_bits_on_any_thread_count(monkeypatch, to_openblas):
    """Decoding one sequence: the tied head is row-major, prepare_for_decoding makes the rest
    column-major. A row takes numpy's OpenBLAS on AMD CPUs (weights of 1 MB and more), else two
    one-thread products of half the outputs each in one batched product (weights of 2 MB and more),
    else PyTorch's product held to one thread for the call (MKL's one-row bits follow the thread
    count on an Intel CPU): either way a row's bits do not depend on the thread count, which the
    call leaves as it found it. A row whose gradient is recorded keeps the products with autograd rules."""
    from threadpoolctl import threadpool_info

    if to_openblas and not cpu_gemm._numpy_openblas():
        pytest.skip("numpy carries no OpenBLAS of its own here")
    monkeypatch.setattr(cpu_gemm, "_rows_to_openblas", lambda: to_openblas)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for inputs, outputs in SHAPES + [(384, 8192), (128, 384), (768, 4095), (2048, 768)]:  # (an odd count: one product)
            x, w, b = torch.randn(1, 1, inputs), torch.randn(outputs, inputs), torch.randn(outputs)
            exact = F.linear(x.double(), w.double(), b.double())
            bound = (inputs + 1) * 2.0**-24 * (x.double().abs() @ w.double().abs().t() + b.double().abs())
            by_openblas = to_openblas and inputs * outputs >= cpu_gemm.ONE_ROW_MIN_WEIGHTS
            for weight in (w, w.t().contiguous().t()):
                assert cpu_gemm._one_row_takes(x, weight, b) and not cpu_gemm._one_row_takes(torch.randn(2, inputs), weight, b)
                torch.set_num_threads(1)
                one = cpu_gemm.linear(x, weight, b)
                assert one.shape == (1, 1, outputs) and ((one - exact).abs() <= bound).all()
                halves = cpu_gemm._halves(weight) if inputs * outputs >= cpu_gemm.ONE_ROW_HALVES_MIN_WEIGHTS else None
                assert (halves is not None) == (inputs * outputs >= cpu_gemm.ONE_ROW_HALVES_MIN_WEIGHTS and outputs % 2 == 0)
                expected = (torch.from_numpy(weight.numpy() @ x.reshape(-1).numpy()).view(1, 1, -1) + b if by_openblas
                            else F.linear(x, weight) + b if halves is None  # (the bias added apart: below)
                            else torch.bmm(x.reshape(1, 1, inputs).expand(2, 1, inputs), halves).reshape(1, 1, -1) + b)
                assert torch.equal(one, expected), (inputs, outputs)
                for count in (2, 3, 8):
                    torch.set_num_threads(count)
                    assert torch.equal(cpu_gemm.linear(x, weight, b), one)
                    assert torch.get_num_threads() == count
                assert torch.equal(cpu_gemm.linear(x[0, 0], weight, b), one[0, 0])
                with torch.inference_mode():
                    assert torch.equal(cpu_gemm.linear(x, weight, b), one)
        if to_openblas:
            assert [lib["num_threads"] for lib in threadpool_info() if "numpy" in lib["filepath"]] == [1]
        with warnings.catch_warnings():  # an overflow is an inf, as from PyTorch's products, not numpy's warning
            warnings.simplefilter("error")
            assert torch.isinf(cpu_gemm.linear(torch.full((1, 512), 1e30), torch.full((512, 512), 1e30))).all()
        # a gradient to record: the rule of two rows and more (oneDNN, where it takes them, for a row-major
        # weight), autograd's gradients
        x, w = torch.randn(1, 512, requires_grad=True), torch.randn(512, 512, requires_grad=True)
        assert not cpu_gemm._one_row_takes(x, w, None) and not cpu_gemm._takes(x, w.t().contiguous().t())
        assert cpu_gemm._takes(x, w) == cpu_gemm._enabled()
        grad = torch.randn(1, 512)
        cpu_gemm.linear(x, w).backward(grad)
        reference_x, reference_w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        F.linear(reference_x, reference_w).backward(grad)
        torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(w.grad, reference_w.grad)
        with torch.no_grad():
            assert cpu_gemm._one_row_takes(x, w, None)
    finally:
        torch.set_num_threads(threads)


def test_the_environment_switch_keeps_one_row_products_pytorchs_too(product_switch):
    x, w = torch.randn(1, 512), torch.randn(512, 512)
    for choice in ("auto", "onednn"):  # one row takes its own path whichever library takes more rows
        product_switch(choice)
        assert cpu_gemm._one_row_takes(x, w, None) == cpu_gemm._X86
    product_switch("mkl")
    assert not cpu_gemm._one_row_takes(x, w, None) and torch.equal(cpu_gemm.linear(x, w), F.linear(x, w))


@onednn
def test_the_layers_gradients_are_autograds():
    torch.manual_seed(0)
    layer = cpu_gemm.Linear(24, 40)
    reference = torch.nn.Linear(24, 40)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(3, 50, 24, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, 50, 40)
    layer(x).backward(grad)
    reference(x_ref).backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not layer(x).requires_grad


def test_auto_takes_onednn_with_avx512_and_pytorchs_own_products_without(product_switch):
    product_switch("auto")
    assert cpu_gemm._enabled() == (cpu_gemm._AVAILABLE and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
    assert cpu_gemm.library() == ("onednn" if cpu_gemm._enabled() else "pytorch")
    product_switch("")  # unset reads as auto
    assert cpu_gemm._choice() == "auto"


def test_the_environment_switch_gives_pytorchs_own_products():
    code = ("import torch, torch.nn.functional as F; from llmkit.model import cpu_gemm; "
            "x, w = torch.randn(64, 32), torch.randn(16, 32); "
            "print(cpu_gemm.takes(x, w), torch.equal(cpu_gemm.linear(x, w), F.linear(x, w)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "LLMKIT_CPU_GEMM": "mkl"}).stdout.split()
    assert out == ["False", "True"]


@onednn
def test_a_frozen_weights_layer_keeps_no_input_for_its_backward():
    """LoRA's base layers: the input is needed only for the weight's gradient (18% of a LoRA step's
    activations were such inputs, kept for nothing)."""
    torch.manual_seed(0)
    x, w = torch.randn(64, 32, requires_grad=True), torch.randn(48, 32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = cpu_gemm.linear(x, w)
    assert not any(t.shape == x.shape for t in saved)
    y.square().sum().backward()
    reference = x.detach().clone().requires_grad_()
    F.linear(reference, w).square().sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_derivatives_beyond_the_first_and_forward_mode_are_pytorchs():
    """The oneDNN op has no derivative of its own: a differentiated backward (create_graph), forward
    mode AD and torch.func transforms get PyTorch's products, not zeros or a dropped tangent."""
    torch.manual_seed(0)
    x, w = torch.randn(6, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    second = []
    for fn in (cpu_gemm.linear, F.linear):
        (gx,) = torch.autograd.grad((fn(x, w) ** 2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad((gx**2).sum(), w)[0])
    assert second[0].abs().max() > 1 and torch.allclose(second[0], second[1], rtol=1e-5, atol=1e-4)
    import torch.autograd.forward_ad as fwAD

    tangent = torch.randn(6, 5)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(cpu_gemm.linear(fwAD.make_dual(x.detach(), tangent), w.detach())).tangent
    torch.testing.assert_close(out, tangent @ w.detach().t())
    grad_w = torch.func.grad(lambda w_: cpu_gemm.linear(x.detach(), w_).sum())(w.detach())
    torch.testing.assert_close(grad_w, torch.ones(6, 4).t() @ x.detach())


def test_shapes_that_f_linear_broadcasts_or_refuses_behave_as_there():
    x = torch.randn(5, 3)
    torch.testing.assert_close(cpu_gemm.linear(x, torch.ones(4, 3), torch.ones(1)), F.linear(x, torch.ones(4, 3), torch.ones(1)))
    assert cpu_gemm.linear(torch.randn(5, 0), torch.randn(4, 0)).shape == (5, 4)  # no inputs: zeros, as F.linear
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        cpu_gemm.linear(x, torch.randn(4, 2))
    # a bias that is a view: strided, or one value expanded (oneDNN would read it as dense)
    w = torch.randn(48, 64)
    for bias in (torch.randn(96)[::2], torch.randn(1).expand(48)):
        for rows in (1, 2, 300):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(cpu_gemm.linear(x, w, bias), F.linear(x, w, bias))


@pytest.mark.skipif(not cpu_gemm._X86 or cpu_gemm._mkl_threads_here() is None, reason="MKL's per-thread setting: x86 PyTorch with MKL")
def test_one_row_holds_mkl_to_one_thread_for_its_own_thread_only(monkeypatch):
    """The one thread is MKL's setting for the calling thread: the process's count, which a Python
    thread started meanwhile copies and keeps, stays as it was during the product (toggling it
    left 297 of 300 threads started beside a decoding loop on one thread for good)."""
    import types

    monkeypatch.setattr(cpu_gemm, "_rows_to_openblas", lambda: False)
    seen = []

    def linear(*args):
        seen.append(torch.get_num_threads())
        return F.linear(*args)

    monkeypatch.setattr(cpu_gemm, "F", types.SimpleNamespace(linear=linear))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x, w = torch.randn(1, 384), torch.randn(1024, 384)
        cpu_gemm.linear(x, w)
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


ONE_ROW_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from llmkit.model import cpu_gemm
g = torch.Generator().manual_seed(0)
digests = []
for inputs, outputs in ((768, 50257), (768, 3072), (384, 1536), (128, 384), (2048, 768)):
    w, b = torch.randn(outputs, inputs, generator=g), torch.randn(outputs, generator=g)
    x = torch.randn(2 * inputs, generator=g)
    for weight in (w, w.t().contiguous().t()):
        for bias in (b, None):
            for row in (x[:inputs], x[::2].view(1, 1, inputs), x[:inputs].view(1, inputs)):
                with torch.no_grad():
                    digests.append(hashlib.sha256(cpu_gemm.linear(row, weight, bias).numpy().tobytes()).hexdigest()[:12])
print(" ".join(digests))
"""


@pytest.mark.skipif(not cpu_gemm._X86, reason="one-row products take their own path on x86 CPUs")
def test_one_row_bits_do_not_follow_the_thread_count_a_process_starts_with(tmp_path):
    """Each thread count in a process of its own, every product its first of that shape: in one
    process the first call with a bias (768 x 50,257, row-major) took other bits on 2 threads than
    later calls and than on 1, and a strided row took a kernel that split its sums by thread (a
    review); the tests that switch counts within one process could not see either."""
    import os

    script = tmp_path / "rows.py"
    script.write_text(ONE_ROW_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    outputs = [subprocess.run([sys.executable, str(script), str(threads)], capture_output=True, text=True, env=env, timeout=300)
               for threads in (1, 2)]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert outputs[0].stdout == outputs[1].stdout and len(outputs[0].stdout.split()) == 60
