"""Inputs and models as people have them (issue 15): Mapping and nested inputs, compiled
modules, summed losses, train-mode BatchNorm; every product checked against a dense Hessian."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, hessian

from sharpest.curvature import HessianOperator, flatten, lanczos, unflatten
from sharpest.curvature.inputs import SummedLossError, batch_size, slice_batch
from sharpest.curvature.risk import EmpiricalRisk


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons in float64; restored so other test modules keep float32."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def dense(model, loss_of_outputs):
    """torch.func.hessian of ``loss_of_outputs(functional model)`` over the flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    like = [p.detach() for p in model.parameters()]

    def f(flat):
        params = dict(zip(names, unflatten(flat, like)))
        return loss_of_outputs(lambda *a, **k: functional_call(model, params, a, k))

    return hessian(f)(flatten(like))


class KeywordModel(nn.Module):
    """Takes Hugging Face style keyword inputs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, features, mask):
        h = torch.tanh(self.embed(features)) * mask.unsqueeze(-1)
        return self.head(h.sum(1))


class NestedModel(nn.Module):
    """Takes one positional argument: (tensor, {"b": tensor, "scale": float})."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, inputs):
        x, rest = inputs
        return self.out(torch.tanh(self.a(x) + rest["scale"] * self.b(rest["b"])))


def test_mapping_inputs_are_keyword_arguments():
    torch.manual_seed(0)
    model = KeywordModel()
    inputs = {"features": torch.randn(10, 4, 3), "mask": (torch.rand(10, 4) > 0.3).double()}
    y = torch.randint(0, 2, (10,))
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (inputs, y), chunk_size=3)  # 4 chunks: 3, 3, 3, 1
    ref = dense(model, lambda m: loss_fn(m(**inputs), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)


def test_mapping_subclass_kept_and_batches_of_mappings():
    torch.manual_seed(1)
    model = KeywordModel()
    batches = [
        (
            OrderedDict(features=torch.randn(n, 4, 3), mask=torch.ones(n, 4)),
            torch.randint(0, 2, (n,)),
        )
        for n in (5, 2)
    ]
    assert isinstance(slice_batch(batches[0][0], 0, 2), OrderedDict)
    loss_fn = nn.CrossEntropyLoss()

    def total(m):  # the mean over all 7 examples
        return sum(loss_fn(m(**x), y) * len(y) for x, y in batches) / 7

    op = HessianOperator(model, loss_fn, batches)
    torch.testing.assert_close(op.to_dense(), dense(model, total), rtol=1e-8, atol=1e-10)


def test_nested_inputs_with_non_tensor_leaves():
    torch.manual_seed(2)
    model = NestedModel()
    Pair = namedtuple("Pair", "x rest")
    inputs = Pair(torch.randn(9, 3), {"b": torch.randn(9, 2), "scale": 0.5})
    y = torch.randint(0, 3, (9,))
    assert batch_size(inputs) == 9
    assert isinstance(slice_batch(inputs, 0, 4), Pair)
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (inputs, y), chunk_size=4)
    ref = dense(model, lambda m: loss_fn(m(inputs), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)


def test_inconsistent_batch_dimensions_are_named():
    with pytest.raises(ValueError, match=r"inputs\['mask'\]: 3"):
        batch_size({"features": torch.zeros(4, 2), "mask": torch.zeros(3)})
    with pytest.raises(TypeError, match="cannot tell the batch size"):
        batch_size({"scale": 1.0})


def test_compiled_module_is_unwrapped():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    compiled = torch.compile(model, backend="aot_eager")
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loss_fn = nn.CrossEntropyLoss()
    # What the operator must avoid: AOTAutograd graphs have no double backward.
    loss = loss_fn(compiled(x), y)
    (g,) = torch.autograd.grad(loss, [model[0].weight], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), [model[0].weight])
    op = HessianOperator(compiled, loss_fn, (x, y))
    assert op.model is model
    ref = dense(model, lambda m: loss_fn(m(x), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)


def test_summed_loss_is_refused_and_reduction_sum_scales_it():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(12, 3), torch.randint(0, 3, (12,))
    summed = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(SummedLossError, match="reduction='sum'"):
        HessianOperator(model, summed, (x, y))
    mean_op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), chunk_size=5)
    sum_op = HessianOperator(model, summed, (x, y), chunk_size=5, reduction="sum")
    torch.testing.assert_close(sum_op.to_dense(), mean_op.to_dense(), rtol=1e-10, atol=1e-12)
    ref = dense(model, lambda m: nn.CrossEntropyLoss()(m(x), y))
    torch.testing.assert_close(sum_op.to_dense(), ref, rtol=1e-8, atol=1e-10)
    assert abs(sum_op.loss() - mean_op.loss()) < 1e-12
    with pytest.raises(ValueError, match="reduction must be one of"):
        HessianOperator(model, summed, (x, y), reduction="total")


def test_mean_loss_of_a_language_model_shape_is_not_mistaken_for_a_sum():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Embedding(7, 4), nn.Linear(4, 7))
    x, y = torch.randint(0, 7, (6, 5)), torch.randint(0, 7, (6, 5))

    def loss_fn(out, t):
        return F.cross_entropy(out.reshape(-1, 7), t.reshape(-1))

    HessianOperator(model, loss_fn, (x, y))  # no error


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def test_train_semantics_uses_batch_statistics_per_chunk():
    torch.manual_seed(6)
    model = BNNet()
    with torch.no_grad():  # running statistics far from the batch's
        model.bn.running_mean.fill_(3.0)
        model.bn.running_var.fill_(0.2)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    loss_fn = nn.CrossEntropyLoss()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    like = [p.detach() for p in model.parameters()]

    def by_hand(flat, xs):  # BatchNorm on batch statistics, written out; no dropout
        p = dict(zip(names, unflatten(flat, like)))
        h = xs @ p["fc1.weight"].T + p["fc1.bias"]
        # By hand: torch.func's forward-over-reverse of F.batch_norm gave an asymmetric
        # Hessian (a nonzero d²L/dγ db₁ although b₁ cancels in h − mean).
        mean, var = h.mean(0), h.var(0, unbiased=False)
        h = (h - mean) / torch.sqrt(var + 1e-5) * p["bn.weight"] + p["bn.bias"]
        return torch.tanh(h) @ p["fc2.weight"].T + p["fc2.bias"]

    def chunked_loss(flat):  # chunks of 5: each normalised with its own statistics
        return sum(loss_fn(by_hand(flat, x[i : i + 5]), y[i : i + 5]) for i in (0, 5)) / 2

    op = HessianOperator(model, loss_fn, (x, y), chunk_size=5, semantics="train")
    torch.testing.assert_close(
        op.to_dense(), hessian(chunked_loss)(flatten(like)), rtol=1e-8, atol=1e-10
    )
    # Running statistics, the counter and the training flags are untouched.
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model.training and model.bn.track_running_stats
    # Eval semantics (the default) differ here: BatchNorm on the running statistics.
    eval_op = HessianOperator(model, loss_fn, (x, y), chunk_size=5)
    assert not torch.allclose(eval_op.to_dense(), op.to_dense(), atol=1e-6)
    with pytest.raises(ValueError, match="semantics must be one of"):
        HessianOperator(model, loss_fn, (x, y), semantics="training")


def test_lanczos_on_keyword_inputs_matches_eigh():
    torch.manual_seed(7)
    model = KeywordModel()
    inputs = {"features": torch.randn(16, 4, 3), "mask": torch.ones(16, 4)}
    y = torch.randint(0, 2, (16,))
    op = HessianOperator(model, nn.CrossEntropyLoss(), (inputs, y))
    exact = torch.linalg.eigvalsh(op.to_dense())
    top = exact[exact.abs().argsort(descending=True)][:3]
    res = lanczos(op, k=3, tol=1e-10)
    torch.testing.assert_close(torch.as_tensor(res.values), top, rtol=1e-7, atol=1e-9)


class Attention(nn.Module):
    """One self-attention layer through F.scaled_dot_product_attention (fused kernels on CPU
    have no double backward)."""

    def __init__(self, manual: bool = False):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 2)
        self.manual = manual

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.manual:
            weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
            h = weights @ v
        else:
            h = F.scaled_dot_product_attention(q, k, v)
        return self.out(h.mean(1))


def test_fused_attention_products_match_written_out_attention():
    torch.manual_seed(8)
    model = Attention().float()
    x, y = torch.randn(6, 5, 4), torch.randint(0, 2, (6,))
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (x.float(), y))
    manual = Attention(manual=True)
    manual.load_state_dict(model.state_dict())
    manual.double()
    ref = dense(manual, lambda m: loss_fn(m(x), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=2e-4, atol=2e-6)


def test_empirical_risk_takes_inputs_as_people_have_them():
    """The input handling lives where the loss is evaluated (EmpiricalRisk), so probes and
    metrics, which evaluate the risk without products, get it too."""
    torch.manual_seed(9)
    model = KeywordModel()
    inputs = {"features": torch.randn(10, 4, 3), "mask": torch.ones(10, 4)}
    y = torch.randint(0, 2, (10,))
    mean, summed = nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum")
    names = [n for n, _ in model.named_parameters()]
    like = [p.detach() for p in model.parameters()]

    def f(flat):
        return mean(functional_call(model, dict(zip(names, unflatten(flat, like))), (), inputs), y)

    with pytest.raises(SummedLossError, match="reduction='sum'"):
        EmpiricalRisk(model, summed, (inputs, y))
    risk = EmpiricalRisk(torch.compile(model), summed, (inputs, y), chunk_size=3,
                         reduction="sum")  # fmt: skip
    assert risk.model is model
    assert abs(risk.loss() - float(f(flatten(like)))) < 1e-12
    torch.testing.assert_close(risk.gradient(), grad(f)(flatten(like)), rtol=1e-10, atol=1e-12)


def test_train_semantics_of_the_risk_match_its_operator():
    torch.manual_seed(10)
    model = BNNet()
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    loss_fn = nn.CrossEntropyLoss()
    risk = EmpiricalRisk(model, loss_fn, (x, y), chunk_size=5, semantics="train")
    op = HessianOperator(model, loss_fn, (x, y), chunk_size=5, semantics="train")
    halves = [(x[:5], y[:5]), (x[5:], y[5:])]
    model.train()  # batch statistics; dropout is off in the risk, so compare without it
    model.drop.eval()
    with torch.no_grad():
        expected = sum(float(loss_fn(model(a), b)) for a, b in halves) / 2
    assert abs(risk.loss() - expected) < 1e-12 and abs(op.loss() - expected) < 1e-12
    torch.testing.assert_close(risk.gradient(), op.gradient(), rtol=0, atol=0)
    assert abs(EmpiricalRisk(model, loss_fn, (x, y), chunk_size=5).loss() - expected) > 1e-6


def test_tracker_with_stderr_keeps_the_operator_options():
    """The operator rebuilt in smaller chunks for the sampling error keeps ``reduction`` and
    ``semantics`` (a summed loss is still divided, Mapping inputs still keyword arguments)."""
    from sharpest.train.tracker import EigenTracker

    torch.manual_seed(11)
    model = KeywordModel()
    inputs = {"features": torch.randn(16, 4, 3), "mask": torch.ones(16, 4)}
    y = torch.randint(0, 2, (16,))
    tracker = EigenTracker(k=2, every=1, stderr=True, tol=1e-10).attach(
        model, nn.CrossEntropyLoss(reduction="sum"), (inputs, y), reduction="sum"
    )
    assert len(tracker.operator.chunks) >= 8 and tracker.operator.reduction == "sum"
    result = tracker.step(0)
    exact = torch.linalg.eigvalsh(HessianOperator(model, nn.CrossEntropyLoss(),
                                                  (inputs, y)).to_dense())  # fmt: skip
    top = exact[exact.abs().argsort(descending=True)][:2]
    torch.testing.assert_close(torch.as_tensor(result.values), top, rtol=1e-7, atol=1e-9)
    assert len(tracker.records[0]["eigenvalues_stderr"]) == 2


# ---- inputs as the model takes them (issue 24): one argument, call= hook, dataclasses ----------


class OneArgumentModel(nn.Module):
    """Takes the batch dict itself, as curvlinops' test models do: ``forward(self, data)``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, data):
        return self.out(torch.tanh(self.lin(data["x"])) * data["w"])


def test_a_mapping_goes_in_as_one_argument_when_forward_takes_one():
    from sharpest.curvature.inputs import resolve_call

    torch.manual_seed(12)
    model = OneArgumentModel()
    inputs = {"x": torch.randn(10, 3), "w": torch.rand(10, 1)}
    y = torch.randint(0, 2, (10,))
    loss_fn = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss_fn, (inputs, y), chunk_size=4)
    assert not op.call.keywords  # decided from the signature, before any call
    ref = dense(model, lambda m: loss_fn(m(inputs), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)
    # The keyword convention is kept where forward names every key (or has **kwargs), and
    # where it names some: an extra key then fails the call, naming both ways.
    assert resolve_call(KeywordModel(), {"features": 0, "mask": 0}).keywords
    extra = {"features": torch.randn(4, 4, 3), "mask": torch.ones(4, 4), "ids": torch.ones(4)}
    assert resolve_call(KeywordModel(), extra).keywords
    with pytest.raises(TypeError, match=r"calling model\(\*\*inputs\).*'ids'.*model\(inputs\)"):
        HessianOperator(KeywordModel(), loss_fn, (extra, y[:4]))


def test_inputs_that_fit_neither_way_are_refused_naming_both():
    class TwoArguments(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.lin(a + b)

    inputs = {"x": torch.randn(4, 3), "z": torch.randn(4, 3)}
    with pytest.raises(TypeError, match=r"neither model\(\*\*inputs\).*nor model\(inputs\).*call="):
        HessianOperator(TwoArguments(), nn.CrossEntropyLoss(), (inputs, torch.zeros(4).long()))
    op = HessianOperator(TwoArguments(), nn.CrossEntropyLoss(), (inputs, torch.zeros(4).long()),
                         call=lambda m, b: m(b["x"], b["z"]))
    assert op.to_dense().shape == (8, 8)


def test_a_wrong_guess_fails_naming_both_ways():
    class Opaque(OneArgumentModel):
        def forward(self, batch, **options):  # **options: looks like it takes keywords
            return super().forward(batch)

    torch.manual_seed(13)
    inputs = {"x": torch.randn(6, 3), "w": torch.rand(6, 1)}
    y = torch.randint(0, 2, (6,))
    with pytest.raises(TypeError, match=r"calling model\(\*\*inputs\).*failed: .*batch.*"
                                        r"model\(inputs\).*call="):
        HessianOperator(Opaque(), nn.CrossEntropyLoss(), (inputs, y))
    model = Opaque()
    op = HessianOperator(model, nn.CrossEntropyLoss(), (inputs, y),
                         call=lambda m, b: m(b))
    ref = dense(model, lambda m: nn.CrossEntropyLoss()(m(inputs), y))
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)


def test_dataclass_batches_with_a_call_hook():
    """A dataclass batch is sliced into chunks like a Mapping; ``call=`` says how it goes in.
    Every evaluation path uses the hook: the risk, both product backends, the GGN."""
    from dataclasses import dataclass

    from sharpest import GGNOperator

    @dataclass
    class Batch:
        features: torch.Tensor
        mask: torch.Tensor
        note: str = "kept"

    torch.manual_seed(14)
    model = KeywordModel()
    batch = Batch(torch.randn(11, 4, 3), (torch.rand(11, 4) > 0.3).double())
    assert batch_size(batch) == 11
    part = slice_batch(batch, 2, 5)
    assert isinstance(part, Batch) and part.features.shape[0] == 3 and part.note == "kept"
    y = torch.randint(0, 2, (11,))
    loss_fn = nn.CrossEntropyLoss()

    def call(m, b):
        return m(b.features, b.mask)

    ref = dense(model, lambda m: loss_fn(m(batch.features, batch.mask), y))
    for backend in ("double_backward", "linearize"):
        op = HessianOperator(model, loss_fn, (batch, y), chunk_size=4, call=call,
                             backend=backend)
        torch.testing.assert_close(op.to_dense(), ref, rtol=1e-8, atol=1e-10)
    risk = EmpiricalRisk(model, loss_fn, (batch, y), chunk_size=4, call=call)
    assert abs(risk.loss() - float(loss_fn(model(batch.features, batch.mask), y))) < 1e-12
    ggn = GGNOperator(model, loss_fn, (batch, y), chunk_size=4, call=call)
    as_keywords = GGNOperator(model, loss_fn, ({"features": batch.features, "mask": batch.mask},
                                               y))  # fmt: skip
    torch.testing.assert_close(ggn.to_dense(), as_keywords.to_dense(), rtol=1e-8, atol=1e-10)
    with pytest.raises(TypeError, match=r"calling model\(inputs\) with inputs of type Batch "
                                        r"failed: .*call=lambda model, inputs"):
        HessianOperator(model, loss_fn, (batch, y))  # model(batch): forward needs 2 arguments


@pytest.mark.extras("curvlinops")
def test_one_argument_model_agrees_with_curvlinops():
    """curvlinops' own dict-input cases: its models take the batch dict as one argument."""
    curvlinops = pytest.importorskip("curvlinops")
    torch.manual_seed(15)
    model = OneArgumentModel()
    data = [({"x": torch.randn(n, 3), "w": torch.rand(n, 1)}, torch.randint(0, 2, (n,)))
            for n in (5, 3)]
    loss_fn = nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    theirs = curvlinops.HessianLinearOperator(
        model, loss_fn, params, data, batch_size_fn=lambda inputs: inputs["x"].shape[0],
        check_deterministic=False,
    )  # fmt: skip
    eye = torch.eye(sum(p.numel() for p in params))
    reference = torch.stack([theirs @ e for e in eye])
    ours = HessianOperator(model, loss_fn, data).to_dense()
    torch.testing.assert_close(ours, reference.to(ours.dtype), rtol=1e-8, atol=1e-10)
