"""``weight_decay_on: all | kernels``: the optimizer and every Hessian (tracker, probes, metrics)
share one L2 term; checked against torch.func.hessian / autograd of the objective written out."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from sharpest.config import ConfigError, make_config
from sharpest.curvature import HessianOperator
from sharpest.models import build_model, decayed_parameters, kernel_parameters
from sharpest.probes.gradients import minibatch_gradients
from sharpest.train import Trainer

WD = 0.3


def _tiny() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3))
    model = model.double()
    x = torch.randn(7, 1, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    return model, (x, y)


def _objective(model: nn.Module, data, decayed: set[str]):
    """θ ↦ mean CE + (wd/2)·Σ over the decayed tensors of ‖w‖², on one flat vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split(sizes), shapes))))
        out = functional_call(model, parts, (data[0],))
        l2 = sum((parts[n] ** 2).sum() for n in names if n in decayed)
        return nn.functional.cross_entropy(out, data[1]) + 0.5 * WD * l2

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta


def test_kernels_are_conv_and_dense_weights():
    cnn = build_model("simplecnn")
    names = {id(p): n for n, p in cnn.named_parameters()}
    assert [names[id(p)] for p in kernel_parameters(cnn)] == [
        "features.0.weight", "features.2.weight", "features.5.weight", "features.7.weight",
        "classifier.1.weight", "classifier.3.weight"]
    lstm = build_model("lstm", 50, hidden_size=8, embedding_dim=8)
    lnames = {id(p): n for n, p in lstm.named_parameters()}
    # Keras kernel_regularizer on the dense head only: no embedding, LSTM or bias
    assert all("weight" in lnames[id(p)] and "lstm" not in lnames[id(p)]
               and "embed" not in lnames[id(p)] for p in kernel_parameters(lstm))
    assert len(decayed_parameters(cnn, "all")) == len(list(cnn.parameters()))
    with pytest.raises(ValueError, match="weight_decay_on must be one of"):
        decayed_parameters(cnn, "biases")
    with pytest.raises(ValueError, match="no convolution or nn.Linear weight"):
        decayed_parameters(nn.Sequential(nn.LayerNorm(3)), "kernels")


@pytest.mark.parametrize("on", ["all", "kernels"])
def test_operator_l2_term_matches_the_dense_hessian(on):
    model, data = _tiny()
    decay = decayed_parameters(model, on)
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in decay)}
    f, theta = _objective(model, data, decayed)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data, WD,
                         decay_params=None if on == "all" else decay)
    dense = op.matmat(torch.eye(op.size, dtype=torch.float64))
    assert torch.allclose(dense, hessian(f)(theta), atol=1e-10)
    assert op.loss() == pytest.approx(float(f(theta)), rel=1e-12)
    g = torch.func.grad(f)(theta)
    assert torch.allclose(op.gradient(), g, atol=1e-12)
    # the probes' mini-batch gradients carry the same L2 term
    sample = minibatch_gradients(model, nn.CrossEntropyLoss(), [data], 1, weight_decay=WD,
                                 decay_mask=op.decay_mask, mode="eval")
    assert torch.allclose(sample.gradients[0].double(), g, atol=1e-10)
    if on == "kernels":  # the biases are not decayed: the term differs from "all"
        assert op.decay_mask is not None and 0 < float(op.decay_mask.sum()) < op.size


def _trainer(on: str) -> Trainer:
    return Trainer(make_config({
        "model": "mlp", "model_options": {"hidden_sizes": [8]}, "data": "mnist1d",
        "train_subset": 64, "epochs": 1, "batch_size": 16, "lr": 0.1, "weight_decay": WD,
        "weight_decay_on": on, "track": {"k": 2, "subset": 16}, "metrics": {"enabled": False},
        "eval": {"train_size": 16}}))


def test_trainer_decays_kernels_only_in_the_step_and_the_hessian():
    t = _trainer("kernels")
    kernels = {id(p) for p in kernel_parameters(t.model)}
    before = [p.detach().clone() for p in t.model.parameters()]
    x, y = t.hessian_data
    t.model.zero_grad()
    t.loss_fn(t.model(x), y).backward()
    grads = [p.grad.detach().clone() for p in t.model.parameters()]
    t.train_step(x, y)
    for p, p0, g in zip(t.model.parameters(), before, grads):
        wd = WD if id(p) in kernels else 0.0
        assert torch.allclose(p.detach(), p0 - 0.1 * (g + wd * p0), atol=1e-6)
    t.tracker.attach(t.model, t.loss_fn, t.hessian_data, WD, decay_params=t.decay_params)
    mask = t.tracker.operator.decay_mask
    expected = torch.cat([torch.full((p.numel(),), float(id(p) in kernels), dtype=torch.float64)
                          for p in t.model.parameters()])
    assert mask is not None and torch.equal(mask, expected)
    # "all" keeps PyTorch's single group and no mask
    t_all = _trainer("all")
    assert t_all.decay_params is None and len(t_all.optimizer.param_groups) == 1


def test_config_rejects_an_unknown_target():
    with pytest.raises(ConfigError, match="weight_decay_on"):
        make_config({"weight_decay_on": "biases"})


def test_resnet_presets_follow_the_papers_l2_at_scale_paper():
    from sharpest.experiments.preset import load_preset, resolve_runs

    for name, run in (("fig2", "resnet32"), ("fig4", "resnet32"), ("table1_resnet32", "sgd_lr0.1")):
        preset = load_preset(name)
        paper = {r.name: r.config for r in resolve_runs(preset, "paper")}[run]
        # Keras l2(0.005) on the kernels: λ‖w‖², gradient 2λw → weight_decay 0.01
        assert (paper.weight_decay, paper.weight_decay_on) == (0.01, "kernels")
    small = {r.name: r.config for r in resolve_runs(load_preset("fig2"), "small")}["resnet32"]
    assert (small.weight_decay, small.weight_decay_on) == (2e-4, "kernels")  # the code's 1e-4
