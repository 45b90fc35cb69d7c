"""``sharpest.train.restore``: a run rebuilt at a checkpoint (what ``sharpest eig`` measures
from): the checkpoint's weights, the run's own Hessian subset, and an operator equal to the
dense Hessian of the loss there; bad checkpoints refused by name. Also the config's one
default of ``track.chunk_size`` and the decay parameters carried in ``RunParts``."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian

from sharpest.config import DEFAULT_CHUNK_SIZE, make_config
from sharpest.errors import CheckpointError, RunFolderError
from sharpest.runs import RunFolder, load_checkpoint
from sharpest.train import Trainer
from sharpest.train.build import build, decay_params_for
from sharpest.train.restore import find_checkpoint, restore_checkpoint

CONFIG = {
    "model": "mlp", "model_options": {"hidden_sizes": [4]}, "data": "mnist1d",
    "train_subset": 64, "batch_size": 32, "epochs": 1, "lr": 0.1, "weight_decay": 0.01,
    "weight_decay_on": "kernels",
    "track": {"k": 2, "every": 0, "subset": 12}, "metrics": {"enabled": False},
    "eval": {"train_size": 16, "splits": ["train"]}, "summary": {"enabled": False},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("restore") / "run"
    assert Trainer(CONFIG, out, quiet=True).fit()["status"] == "finished"
    return out


def test_restore_loads_the_checkpoint_weights_and_the_run_subset(run):
    point = restore_checkpoint(run)
    path = RunFolder(run).latest_checkpoint()
    assert point.path == path and point.iteration == load_checkpoint(path)["iteration"]
    saved = load_checkpoint(path)["model"]
    for name, value in point.parts.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert point.parts.hessian_data[0].shape[0] == 12
    assert restore_checkpoint(run, subset=8).parts.hessian_data[0].shape[0] == 8


def test_the_restored_operator_is_the_dense_hessian_there(run):
    point = restore_checkpoint(run)
    op = point.hessian()
    model, (x, y) = point.parts.model, point.parts.hessian_data
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    decayed = {id(p) for p in point.parts.decay_params}
    mask = [id(p) in decayed for p in model.parameters()]

    def loss(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat)), (x,))
        l2 = sum((f**2).sum() for f, m in zip(flat, mask) if m)
        return point.parts.loss_fn(out, y) + 0.5 * CONFIG["weight_decay"] * l2

    blocks = hessian(loss, tuple(params))
    sizes = [p.numel() for p in params]
    dense = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j])
                                  for j in range(len(sizes))], 1)
                       for i in range(len(sizes))], 0).double()
    eye = torch.eye(op.size, dtype=torch.float64)
    product = torch.stack([torch.as_tensor(op @ e.numpy()) for e in eye], 1)
    assert torch.allclose(product, dense, atol=1e-5, rtol=1e-4)


def test_bad_checkpoints_are_refused_by_name(tmp_path, run):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="holds no checkpoint"):
        find_checkpoint(tmp_path / "empty")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": 1}, junk)
    with pytest.raises(CheckpointError, match="not a sharpest checkpoint"):
        restore_checkpoint(junk)
    state = load_checkpoint(RunFolder(run).latest_checkpoint())
    state["config"]["model_options"] = {"hidden_sizes": [5]}
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        restore_checkpoint(other)


def test_chunk_size_has_one_default_in_the_config():
    assert make_config({}).track.chunk_size == DEFAULT_CHUNK_SIZE == 512
    # configs written when the default was null still load (and resume: same to_dict)
    assert make_config({"track": {"chunk_size": None}}).to_dict() == make_config({}).to_dict()


def test_run_parts_carry_the_decay_parameters_the_optimizer_has():
    cfg = make_config(CONFIG)
    parts = build(cfg)
    expected = decay_params_for(cfg, parts.model)
    assert [id(p) for p in parts.decay_params] == [id(p) for p in expected]
    decayed = {id(p) for p in parts.decay_params}
    for group in parts.optimizer.param_groups:
        (p,) = group["params"]
        assert group["weight_decay"] == (0.01 if id(p) in decayed else 0.0)
    assert build(make_config({**CONFIG, "weight_decay_on": "all"})).decay_params is None
