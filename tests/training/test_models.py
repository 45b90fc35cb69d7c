"""Tests for sharpest.models: parameter counts derived by hand, shapes, errors, HVPs, LSTM state."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpest.models import (
    MODEL_NAMES,
    build_model,
    canonical_name,
    model_options,
    num_parameters,
)
from sharpest.models.vgg import VGG


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These tensors are tiny: extra intra-op threads only spin on a shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv(cin: int, cout: int, k: int) -> int:
    """Weights plus biases of a k×k (or 1-D length-k) convolution."""
    return cin * k * k * cout + cout


def conv1d(cin: int, cout: int, k: int) -> int:
    return cin * k * cout + cout


def dense(i: int, o: int) -> int:
    return i * o + o


def bn(c: int) -> int:
    """BatchNorm's trainable scale and shift (running statistics are buffers)."""
    return 2 * c


def lstm_layer(i: int, h: int, biases: int = 1) -> int:
    """Four gates, each with input and recurrent kernels and ``biases`` bias vectors."""
    return 4 * (i * h + h * h + biases * h)


# SimpleCNN, Supplement F: 'same' padding keeps 32×32, two pools give 8×8×64 = 4096 features.
SIMPLECNN_SAME = (
    conv(3, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
    + dense(8 * 8 * 64, 128) + dense(128, 10)
)  # fmt: skip
# Authors' code: 32 → (valid) 30 → pool 15 → (valid) 13 → pool 6: 6·6·64 = 2304 features.
SIMPLECNN_CODE = (
    conv(3, 32, 3) + conv(32, 32, 3) + conv(32, 64, 3) + conv(64, 64, 3)
    + dense(6 * 6 * 64, 128) + dense(128, 10)
)  # fmt: skip
# Section-4 "medium" with the code's padding, kernel 5: 32 → 28 → 14 → 10 → 5: 5·5·200.
# By hand: 7,600 + 250,100 + 500,200 + 1,000,200 + 640,128 + 1,290 = 2,399,518 (the code's).
SIMPLECNN_MEDIUM_CODE = (
    conv(3, 100, 5) + conv(100, 100, 5) + conv(100, 200, 5) + conv(200, 200, 5)
    + dense(5 * 5 * 200, 128) + dense(128, 10)
)  # fmt: skip

# ResNet-32: first conv; stage 1 has 10 convs 16→16; stages 2 and 3 open with a strided conv,
# a same-width conv and a 1×1 shortcut, then 4 blocks of 2 same-width convs; dense head.
RESNET32 = (
    conv(3, 16, 3)
    + 10 * conv(16, 16, 3)
    + conv(16, 32, 3) + conv(32, 32, 3) + conv(16, 32, 1) + 8 * conv(32, 32, 3)
    + conv(32, 64, 3) + conv(64, 64, 3) + conv(32, 64, 1) + 8 * conv(64, 64, 3)
    + dense(64, 10)
)  # fmt: skip
# BN-ReLU-conv: each block normalises its input (in channels) and its middle (out channels),
# plus one BN before the head.
RESNET32_BN_EXTRA = (
    5 * (bn(16) + bn(16))
    + (bn(16) + bn(32)) + 4 * (bn(32) + bn(32))
    + (bn(32) + bn(64)) + 4 * (bn(64) + bn(64))
    + bn(64)
)  # fmt: skip

VGG11_CONVS = (
    conv(3, 64, 3) + conv(64, 128, 3) + conv(128, 256, 3) + conv(256, 256, 3)
    + conv(256, 512, 3) + 3 * conv(512, 512, 3)
)  # fmt: skip
# BN on the input image, after each of the 8 convs and after the two hidden dense layers.
VGG11_BN = bn(3) + bn(64) + bn(128) + 2 * bn(256) + 4 * bn(512) + 2 * bn(512)


def vgg11(classes: int, with_bn: bool = True) -> int:
    return (
        VGG11_CONVS + dense(512, 512) + dense(512, 512) + dense(512, classes)
        + (VGG11_BN if with_bn else 0)
    )  # fmt: skip


# PTB "small": Embedding(10000, 200), 2 LSTM(200) with one bias per gate (Keras), dense 10000.
LSTM_SMALL = 10000 * 200 + lstm_layer(200, 200) + lstm_layer(200, 200) + dense(200, 10000)

PARAM_COUNTS = [
    ("simplecnn", 10, {}, SIMPLECNN_SAME),
    ("simplecnn", 10, {"padding": "code"}, SIMPLECNN_CODE),
    ("simplecnn", 10, {"variant": "medium", "padding": "code"}, SIMPLECNN_MEDIUM_CODE),
    ("simplecnn", 10, {"variant": "medium"}, SIMPLECNN_MEDIUM_CODE),
    ("resnet32", 10, {}, RESNET32),
    ("resnet32", 10, {"batchnorm": True}, RESNET32 + RESNET32_BN_EXTRA),
    ("vgg11", 10, {}, vgg11(10)),
    ("vgg11", 100, {}, vgg11(100)),
    # width 1/8: convs 8, 16, 32, 32, 64 ×4, hidden 512/8 = 64, BN on the same widths.
    (
        "vgg11",
        10,
        {"width": 0.125},
        conv(3, 8, 3)
        + conv(8, 16, 3)
        + conv(16, 32, 3)
        + conv(32, 32, 3)
        + conv(32, 64, 3)
        + 3 * conv(64, 64, 3)
        + dense(64, 64)
        + dense(64, 64)
        + dense(64, 10)
        + bn(3)
        + bn(8)
        + bn(16)
        + 2 * bn(32)
        + 4 * bn(64)
        + 2 * bn(64),
    ),
    ("lstm", 10000, {}, LSTM_SMALL),
    # PyTorch's native layout adds a second (redundant) bias per gate: 2 layers × 4 × 200.
    ("lstm", 10000, {"single_bias": False}, LSTM_SMALL + 2 * 4 * 200),
    # Tied: the output layer reuses the embedding matrix, leaving only its bias.
    ("lstm", 10000, {"tie_weights": True}, LSTM_SMALL - 200 * 10000),
    # Bidirectional: two directions per layer; layer 2 and the output read 400 features.
    (
        "lstm",
        10000,
        {"bidirectional": True},
        10000 * 200 + 2 * lstm_layer(200, 200) + 2 * lstm_layer(400, 200) + dense(400, 10000),
    ),
    # 40 → conv k5 → 40 → stride 2 → 20 → stride 2 → 10: 32·10 features.
    (
        "mnist1d_cnn",
        10,
        {},
        conv1d(1, 16, 5) + conv1d(16, 32, 5) + conv1d(32, 32, 5) + dense(32 * 10, 10),
    ),
    ("mlp", 10, {}, dense(40, 64) + dense(64, 64) + dense(64, 10)),
    ("mlp", 3, {"hidden_sizes": [5], "input_dim": 7}, dense(7, 5) + dense(5, 3)),
]


def test_model_names() -> None:
    assert set(MODEL_NAMES) == {"simplecnn", "resnet32", "vgg11", "lstm", "mnist1d_cnn", "mlp",
                                "gpt"}


@pytest.mark.parametrize(("name", "classes", "options", "expected"), PARAM_COUNTS)
def test_parameter_counts(name: str, classes: int, options: dict, expected: int) -> None:
    assert num_parameters(build_model(name, classes, **options)) == expected


@pytest.mark.parametrize(
    ("name", "classes", "documented"),
    [("simplecnn", 10, 591_274), ("resnet32", 10, 465_674), ("lstm", 10000, 4_651_600)],
)
def test_built_models_have_the_documented_totals(name: str, classes: int, documented: int) -> None:
    # The totals quoted in the docs (ResNet-32: SETTINGS.md's ≈ 4.7·10⁵), against the models
    # the library builds, not against the hand counts above.
    assert num_parameters(build_model(name, classes)) == documented


def test_medium_simplecnn_is_the_authors_code() -> None:
    # SETTINGS.md: the code's Sec. 4 SimpleCNN has 2,399,518 parameters ('valid' in convs 2, 4)
    model = build_model("simplecnn", 10, variant="medium")
    assert num_parameters(model) == SIMPLECNN_MEDIUM_CODE == 2_399_518
    assert [m.padding for m in model.features if isinstance(m, torch.nn.Conv2d)] == [
        "same", "valid", "same", "valid"]


def _input_for(name: str, classes: int, batch: int = 2) -> torch.Tensor:
    if name in ("lstm", "gpt"):
        return torch.randint(0, classes, (batch, 5))
    if name in ("mnist1d_cnn", "mlp"):
        return torch.randn(batch, 40)
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shapes(name: str) -> None:
    classes = 37 if name in ("lstm", "gpt") else 7
    torch.manual_seed(0)
    model = build_model(name, classes)
    x = _input_for(name, classes)
    for mode in (model.train, model.eval):
        mode()
        out = model(x)
        expected = (2, 5, classes) if name in ("lstm", "gpt") else (2, classes)
        assert out.shape == expected
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({}, (64, 8, 8)),
        ({"padding": "code"}, (64, 6, 6)),
        ({"variant": "medium", "padding": "code"}, (200, 5, 5)),
        ({"variant": "medium"}, (200, 5, 5)),  # the authors' code: 'valid' in convs 2 and 4
        ({"variant": "medium", "padding": "same"}, (200, 8, 8)),
        ({"filters": (8, 8, 16, 16), "kernel_size": 5}, (16, 8, 8)),
    ],
)
def test_simplecnn_feature_maps(options: dict, shape: tuple[int, ...]) -> None:
    model = build_model("simplecnn", **options)
    assert model.features(torch.zeros(1, 3, 32, 32)).shape[1:] == shape


def test_mnist1d_accepts_channel_dim_and_mlp_flattens() -> None:
    model = build_model("mnist1d_cnn").eval()
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))
    mlp = build_model("mlp", input_dim=3 * 4 * 4, hidden_sizes=())
    assert mlp(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_names_are_forgiving() -> None:
    assert canonical_name("ResNet-32") == "resnet32"
    assert canonical_name("simple_cnn") == "simplecnn"
    assert canonical_name("MNIST1D") == "mnist1d_cnn"
    assert canonical_name("VGG-11") == "vgg11"


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*simplecnn.*resnet32"):
        build_model("resnet18")


def test_unknown_option_lists_valid_options() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'batch_norm'.*valid options:.*"):
        build_model("vgg11", batch_norm=False)
    with pytest.raises(ValueError, match="variant.*padding"):
        build_model("simplecnn", nonsense=1)
    assert set(model_options("lstm")) >= {"dropout", "tie_weights", "bidirectional", "stateful"}


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("simplecnn", {"padding": "valid"}, "padding must be one of"),
        ("simplecnn", {"variant": "large"}, "variant must be one of"),
        ("simplecnn", {"filters": (32, 64)}, "filters must be 4"),
        ("simplecnn", {"image_size": 8, "kernel_size": 5, "padding": "code"}, "too small"),
        ("resnet32", {"batchnorm": "false"}, "batchnorm must be true or false"),
        ("resnet32", {"depth_scale": -1.0}, "depth_scale must be positive"),
        ("vgg11", {"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ("lstm", {"tie_weights": True, "hidden_size": 100}, "tie_weights needs"),
        ("lstm", {"num_layers": 0}, "num_layers must be a positive integer"),
        ("mlp", {"activation": "gelu"}, "activation must be one of"),
    ],
)
def test_bad_option_values(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, **options)


@pytest.mark.parametrize("classes", [0, -3, 2.5, True])
def test_bad_num_classes(classes: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", classes)  # type: ignore[arg-type]


def test_num_classes_accepts_numpy_and_torch_integers() -> None:
    import numpy as np

    assert build_model("mlp", np.int64(4))(torch.zeros(1, 40)).shape == (1, 4)
    assert build_model("mlp", torch.tensor(3))(torch.zeros(1, 40)).shape == (1, 3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_init_is_reproducible(name: str) -> None:
    # A narrower LSTM: the default's orthogonal init (QR) dominates the cost, not the seeding.
    options = {"hidden_size": 32} if name == "lstm" else {}

    def params(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [p.detach().clone() for p in build_model(name, 11, **options).parameters()]

    a, b, c = params(3), params(3), params(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_resnet_init_is_depth_scaled_truncated_normal() -> None:
    torch.manual_seed(0)
    model = build_model("resnet32")
    c = 1 / 15  # one over the number of residual blocks
    w = model.blocks[-1].conv2.weight  # 64·9 fan-in, 36864 draws
    sigma = math.sqrt(2 * c / (64 * 9))
    assert w.abs().max() <= 2 * sigma
    # A ±2σ-truncated normal keeps std 0.8796σ (Keras 2.2.2 does not correct for it).
    assert w.std().item() == pytest.approx(0.8796 * sigma, rel=0.03)
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if hasattr(m, "bias"))
    corrected = build_model("resnet32", truncation_correction=True).blocks[-1].conv2.weight
    assert corrected.std().item() == pytest.approx(sigma, rel=0.03)
    assert build_model("resnet32", batchnorm=True).depth_scale == 1.0


def test_glorot_init_bounds() -> None:
    model = build_model("simplecnn")
    dense1 = model.classifier[1]
    limit = math.sqrt(6 / (4096 + 128))
    assert dense1.weight.abs().max() <= limit
    assert dense1.weight.abs().max() > 0.9 * limit
    conv2 = model.features[2]
    assert conv2.weight.abs().max() <= math.sqrt(6 / (32 * 9 + 32 * 9))


def test_vgg_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model("vgg11", hidden=32)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert not any(isinstance(m, nn.Dropout) for m in build_model("vgg11", dropout=0).modules())


# ---------------------------------------------------------------------------------------------
# Hessian-vector products: double backward versus a central difference of gradients, float64.

HVP_CASES = [
    ("simplecnn", {}, (2, 3, 32, 32)),
    ("simplecnn", {"padding": "code"}, (2, 3, 32, 32)),
    # The full ResNet-32 on 16×16 inputs (global pooling takes any size): fewer ReLU units.
    ("resnet32", {}, (2, 3, 16, 16)),
    ("resnet32", {"batchnorm": True, "blocks_per_stage": 1}, (2, 3, 16, 16)),
    # Every VGG-11 layer at 1/8 width: the full net costs ~8 s of CPU in float64.
    ("vgg11", {"width": 0.125}, (2, 3, 32, 32)),
    ("vgg11", {"batchnorm": False, "width": 0.125, "hidden": 16}, (2, 3, 32, 32)),
    ("lstm", {"embedding_dim": 12, "hidden_size": 12}, (3, 6)),
    ("lstm", {"embedding_dim": 8, "hidden_size": 8, "bidirectional": True}, (2, 4)),
    ("mnist1d_cnn", {}, (4, 40)),
    ("mlp", {"activation": "tanh"}, (4, 40)),
]


def _loss_fn(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _gradient(params: list[nn.Parameter], loss: torch.Tensor, **kw: bool) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, **kw))


@pytest.mark.parametrize(("name", "options", "shape"), HVP_CASES)
def test_hvp_matches_finite_differences(name: str, options: dict, shape: tuple) -> None:
    torch.manual_seed(0)
    classes = 23 if name == "lstm" else 10
    model = build_model(name, classes, **options).double().eval()
    params = list(model.parameters())
    with torch.no_grad():
        # Zero biases put units exactly on ReLU kinks (e.g. all-zero patches); move off them so
        # the finite difference sees a twice-differentiable point.
        for p in params:
            p.add_(0.01 * torch.randn_like(p))
    if name == "lstm":
        x = torch.randint(0, classes, shape)
        y = torch.randint(0, classes, shape)
    else:
        x = torch.randn(shape, dtype=torch.float64)
        y = torch.randint(0, classes, (shape[0],))
    v = [torch.randn_like(p) for p in params]
    norm = math.sqrt(sum(float((t * t).sum()) for t in v))
    v = [t / norm for t in v]

    g = _gradient(params, _loss_fn(name, model, x, y), create_graph=True)
    dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
    hv = torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, params)])

    # ReLU networks are only piecewise smooth: a larger step moves some of the ~10⁵ units across
    # their kink and the difference quotient jumps. 1e-6 keeps roundoff near 1e-9 (float64).
    eps = 1e-6
    grads = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, t in zip(params, v, strict=True):
                p.add_(sign * eps * t)
        flat = [t.reshape(-1) for t in _gradient(params, _loss_fn(name, model, x, y))]
        grads.append(torch.cat(flat))
        with torch.no_grad():
            for p, t in zip(params, v, strict=True):
                p.sub_(sign * eps * t)
    fd = (grads[0] - grads[1]) / (2 * eps)
    assert hv.norm() > 0
    assert (hv - fd).norm() <= 1e-6 * hv.norm()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["simplecnn", "lstm", "mnist1d_cnn"])
def test_forward_over_reverse_hvp_agrees(name: str) -> None:
    # The curvature code may use torch.func (jvp of grad); both routes must give the same product.
    from torch.func import functional_call, grad, jvp

    torch.manual_seed(1)
    classes = 17 if name == "lstm" else 10
    options = {
        "lstm": {"embedding_dim": 8, "hidden_size": 8},
        "simplecnn": {"image_size": 16, "filters": (4, 4, 8, 8)},
    }.get(name, {})
    model = build_model(name, classes, **options).double().eval()
    x = _input_for(name, classes, batch=3)
    x = x if name == "lstm" else x.double()
    if name == "simplecnn":
        x = x[..., :16, :16]
    y = torch.randint(0, classes, (3, 5) if name == "lstm" else (3,))
    params = {k: p.detach() for k, p in model.named_parameters()}
    v = {k: torch.randn_like(p) for k, p in params.items()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(model, p, (x,))
        return F.cross_entropy(out.reshape(-1, classes), y.reshape(-1))

    _, hv = jvp(grad(loss), (params,), (v,))
    plist = list(model.parameters())
    g = _gradient(plist, _loss_fn(name, model, x, y), create_graph=True)
    dot = sum((gi * vi).sum() for gi, vi in zip(g, v.values(), strict=True))
    for a, b in zip(hv.values(), torch.autograd.grad(dot, plist), strict=True):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# LSTM state.


def _small_lstm(**options: object) -> nn.Module:
    torch.manual_seed(0)
    defaults = {"embedding_dim": 6, "hidden_size": 5, "dropout": 0.0}
    return build_model("lstm", 13, **{**defaults, **options})


def test_lstm_stateful_training_continues_the_sequence() -> None:
    model = _small_lstm().train()
    tokens = torch.randint(0, 13, (3, 8))
    whole = model(tokens)
    model.reset_state()
    first, second = model(tokens[:, :4]), model(tokens[:, 4:])
    torch.testing.assert_close(torch.cat([first, second], 1), whole)
    h, c = model.hidden_state
    assert h.shape == c.shape == (2, 3, 5)
    assert not h.requires_grad and not c.requires_grad
    # The carried state is detached: backward stops at the window boundary.
    second.sum().backward()


def test_lstm_reset_eval_and_batch_size_change() -> None:
    model = _small_lstm().train()
    tokens = torch.randint(0, 13, (2, 4))
    fresh = model(tokens)
    assert not torch.allclose(model(tokens), fresh)  # state carried
    model.reset_state()
    torch.testing.assert_close(model(tokens), fresh)

    carried = model.hidden_state
    model.eval()
    torch.testing.assert_close(model(tokens), fresh)  # eval starts from zeros
    assert model.hidden_state is carried  # and leaves the training state alone
    model.train()

    other = torch.randint(0, 13, (4, 4))
    model(other)  # batch size 4: the size-2 state is dropped, not broadcast
    assert model.hidden_state[0].shape[1] == 4
    model.reset_state()
    torch.testing.assert_close(model(other[:2]), model.eval()(other[:2]))


def test_lstm_stateless_option() -> None:
    model = _small_lstm(stateful=False).train()
    tokens = torch.randint(0, 13, (2, 4))
    torch.testing.assert_close(model(tokens), model(tokens))
    assert model.hidden_state is None


def test_lstm_bidirectional_carries_forward_state_only() -> None:
    model = _small_lstm(bidirectional=True).train()
    model(torch.randint(0, 13, (2, 4)))
    h, c = model.hidden_state
    assert h.shape == (4, 2, 5)  # (layers · directions, batch, hidden)
    assert torch.count_nonzero(h[1::2]) == 0 and torch.count_nonzero(c[1::2]) == 0
    assert torch.count_nonzero(h[0::2]) > 0


def test_lstm_single_bias_is_a_buffer_that_follows_the_module() -> None:
    model = _small_lstm()
    names = [n for n, _ in model.named_parameters()]
    assert not any("bias_hh" in n for n in names)
    assert "lstm.bias_hh_l0" not in model.state_dict()
    assert isinstance(model.lstm, nn.LSTM) and isinstance(model.lstm, nn.RNNBase)
    model = model.double()
    assert all(w.dtype == torch.float64 for w in model.lstm._flat_weights)
    clone = _small_lstm()
    clone.load_state_dict(model.float().state_dict())
    tokens = torch.randint(0, 13, (2, 4))
    torch.testing.assert_close(clone.eval()(tokens), model.eval()(tokens))


def test_lstm_keras_init() -> None:
    model = _small_lstm(embedding_dim=7, hidden_size=7)
    assert model.embedding.weight.abs().max() <= 0.05
    w_hh = model.lstm.weight_hh_l0  # (4h, h) with orthonormal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(7), atol=1e-5, rtol=0)
    assert torch.count_nonzero(model.lstm.bias_ih_l0) == 0


def test_vgg_class_accepts_other_configs() -> None:
    model = VGG(5, config=(8, "M", 16, "M"), hidden=4, image_size=8)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
