"""The ``gpt`` model: its parameter count formula, causality, a hand-written reference forward
(explicit masked softmax), and Hessian-vector products through SDPA against the dense Hessian of
that reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sharpest.curvature import HessianOperator
from sharpest.data.bundle import cross_entropy
from sharpest.models import GPT, build_model, decayed_parameters, model_options, num_parameters
from sharpest.models.gpt import gpt_num_parameters


def numel(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("vocab", "options"),
    [
        (10000, {}),
        (37, {"layers": 1, "width": 8, "heads": 2, "context": 5}),
        (50, {"layers": 3, "width": 12, "heads": 3, "context": 16, "dropout": 0.1}),
    ],
)
def test_parameter_count_formula(vocab: int, options: dict) -> None:
    model = build_model("gpt", vocab, **options)
    full = {**model_options("gpt"), **options}
    expected = gpt_num_parameters(vocab, full["layers"], full["width"], full["context"])
    assert numel(model) == num_parameters(model) == expected


def test_default_count_is_the_documented_one() -> None:
    # The GPT module docstring quotes this total for PTB's 10,000 words.
    assert num_parameters(build_model("gpt", 10000)) == 1_693_184


def test_output_layer_is_the_token_embedding() -> None:
    model = build_model("gpt", 11, layers=1, width=8, heads=2, context=4)
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n or "decoder" in n for n in names)
    x = torch.randint(0, 11, (2, 4))
    model.token_embedding.weight.grad = None
    model(x).sum().backward()
    # Gradient reaches every row through the output layer, not only the rows of the inputs.
    assert bool((model.token_embedding.weight.grad.abs().sum(1) > 0).all())


def test_kernels_decay_excludes_embeddings_and_norms() -> None:
    model = build_model("gpt", 11, layers=1, width=8, heads=2, context=4)
    decayed = {id(p) for p in decayed_parameters(model, "kernels")}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in decayed} == {
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight", "blocks.0.fc.weight",
        "blocks.0.proj.weight"}


def reference_logits(params: dict[str, torch.Tensor], tokens: torch.Tensor, layers: int,
                     heads: int) -> torch.Tensor:
    """The module docstring's layout written out: explicit −∞ mask, softmax, no SDPA."""
    T = tokens.shape[1]
    x = params["token_embedding.weight"][tokens] + params["position_embedding.weight"][:T]
    w = x.shape[-1]

    def ln(z, name):
        return F.layer_norm(z, (w,), params[f"{name}.weight"], params[f"{name}.bias"], 1e-5)

    def lin(z, name):
        return z @ params[f"{name}.weight"].T + params[f"{name}.bias"]

    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for i in range(layers):
        b = f"blocks.{i}"
        q, k, v = lin(ln(x, f"{b}.ln1"), f"{b}.attn.qkv").split(w, dim=-1)
        d = w // heads
        out = []
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            scores = q[..., s] @ k[..., s].transpose(-1, -2) / math.sqrt(d)
            attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            out.append(attn @ v[..., s])
        x = x + lin(torch.cat(out, dim=-1), f"{b}.attn.proj")
        hidden = F.gelu(lin(ln(x, f"{b}.ln2"), f"{b}.fc"))
        x = x + lin(hidden, f"{b}.proj")
    return ln(x, "ln_f") @ params["token_embedding.weight"].T


def tiny_gpt(layers: int = 2) -> GPT:
    torch.manual_seed(0)
    model = build_model("gpt", 7, layers=layers, width=4, heads=2, context=5).double()
    # Larger weights than GPT-2's 0.02 so the curvature is far from that of a linear model.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def test_forward_matches_the_hand_written_reference() -> None:
    model = tiny_gpt()
    x = torch.randint(0, 7, (3, 5))
    params = dict(model.named_parameters())
    torch.testing.assert_close(model(x), reference_logits(params, x, 2, 2), rtol=1e-12,
                               atol=1e-12)


def test_attention_is_causal() -> None:
    model = tiny_gpt()
    x = torch.randint(0, 7, (2, 5))
    y = x.clone()
    y[:, 3:] = (y[:, 3:] + 1) % 7  # change the future of position 2
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_hessian_products_through_sdpa_match_the_dense_reference_hessian() -> None:
    layers = 1
    model = tiny_gpt(layers)
    torch.manual_seed(1)
    x = torch.randint(0, 7, (3, 5))
    y = torch.randint(0, 7, (3, 5))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    wd = 0.01

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (c.view(s) for c, s in
                                 zip(torch.split(flat, sizes), shapes, strict=True)), strict=True))
        logits = reference_logits(parts, x, layers, 2)
        return cross_entropy(logits, y) + 0.5 * wd * (flat**2).sum()

    dense = torch.autograd.functional.hessian(loss, theta)
    assert dense.shape == (theta.numel(), theta.numel())
    op = HessianOperator(model, cross_entropy, (x, y), weight_decay=wd)
    v = torch.randn(theta.numel(), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), dense @ v, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-9, atol=1e-10)
    # The curvature is not that of a quadratic: a real attention Hessian, with both signs.
    eig = torch.linalg.eigvalsh(dense)
    assert eig.min() < -1e-3 and eig.max() > 1e-2


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", 7, layers=1, width=8, heads=2, context=5, dropout=0.5)
    x = torch.randint(0, 7, (2, 5))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 6, "heads": 4}, "width must be a multiple of heads"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"context": 2.5}, "context must be a positive integer"),
        ({"heads": True}, "heads must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model("gpt", 7, **options)


def test_sequence_longer_than_context_is_a_clear_error() -> None:
    model = build_model("gpt", 7, layers=1, width=8, heads=2, context=4)
    with pytest.raises(ValueError, match=r"5 tokens is longer than the model's context \(4\)"):
        model(torch.zeros(1, 5, dtype=torch.long))
