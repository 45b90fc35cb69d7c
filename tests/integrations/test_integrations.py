"""The Lightning and Hugging Face callbacks, with the real libraries on tiny CPU models: they
track the top-k on a fixed subset (checked against the final model's Hessian), drive
NudgedSGD's basis at epoch starts, and mirror the records to sinks (issue 15)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sharpest.curvature import HessianOperator, lanczos
from sharpest.optim import NudgedSGD
from tests.helpers import SequenceDataset, hf_trainer

# Needed at import (the LightningModules below); tests/conftest.py marks and skips the rest.
pl = pytest.importorskip(
    "pytorch_lightning", reason='needs pytorch_lightning: pip install -e ".[integrations]"'
)
pytestmark = pytest.mark.extras("pytorch_lightning")


def expected_points():
    # 4 steps per epoch, 2 epochs, every=3: epoch starts 0 and 4 (refresh), steps 3 and 6,
    # and the end (8).
    return [0, 3, 4, 6, 8], [True, False, True, False, False]


class TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y)

    def configure_optimizers(self):
        return NudgedSGD(self.parameters(), lr=0.2, gamma=0.5, k=2)


def test_lightning_callback_tracks_and_drives_nudged_sgd(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from sharpest.integrations.lightning import SharpestCallback

    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    module = TinyModule()
    callback = SharpestCallback(
        (x[:32], y[:32]), nn.CrossEntropyLoss(), k=2, every=3, tol=1e-8,
        sinks=["csv", "tensorboard"], log_dir=tmp_path / "sinks",
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="pl"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, loader)
    points, refreshed = expected_points()
    assert [r["iteration"] for r in callback.records] == points
    assert [r.get("refreshed", False) for r in callback.records] == refreshed
    # epochs done at the end point, as in sharpest's own trainer
    assert [r["epoch"] for r in callback.records] == [0, 0, 1, 1, 2]
    optimizer = trainer.optimizers[0]
    assert optimizer.basis_version == 2
    # The last point is the trained model's top-2 (exact, from a dense eigendecomposition).
    op = HessianOperator(module, nn.CrossEntropyLoss(), (x[:32], y[:32]))
    exact = np.linalg.eigvalsh(op.to_dense().numpy())
    np.testing.assert_allclose(
        callback.records[-1]["eigenvalues"], exact[np.argsort(-np.abs(exact))][:2], rtol=1e-5
    )
    # Sinks and Lightning's own logger got the eigenvalues.
    csv = pd.read_csv(tmp_path / "sinks" / "metrics.csv")
    lam1 = csv[(csv.event == "eigen") & (csv.name == "eigenvalues_1")]
    assert lam1.iteration.tolist() == points
    np.testing.assert_allclose(lam1.value, [r["eigenvalues"][0] for r in callback.records])
    assert list((tmp_path / "sinks" / "tensorboard").glob("events.out.tfevents.*"))
    logged = pd.read_csv(next((tmp_path / "pl").rglob("metrics.csv")))
    assert logged["eigen/eigenvalues_1"].dropna().size == len(points)


def test_lightning_resume_from_a_checkpoint_continues_the_tracking(tmp_path):
    """Stopped after epoch 1 and resumed with ``fit(ckpt_path=...)``, the callback continues
    where it stood (warm start from the last point, NudgedSGD's basis and its version from
    the checkpoint): the resumed points are those of the run that never stopped."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from sharpest.integrations.lightning import SharpestCallback

    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    init = TinyModule().state_dict()

    def fit(epochs, folder, ckpt_path=None):
        module = TinyModule()
        module.load_state_dict(init)
        callback = SharpestCallback((x[:32], y[:32]), nn.CrossEntropyLoss(), k=2, every=3,
                                    tol=1e-8)
        saver = ModelCheckpoint(dirpath=folder / "ckpt", save_last=True)
        trainer = pl.Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder,
            callbacks=[callback, saver],
        )  # fmt: skip
        trainer.fit(module, loader, ckpt_path=ckpt_path)
        return callback.records, trainer.optimizers[0]

    whole, whole_opt = fit(2, tmp_path / "whole")
    first, _ = fit(1, tmp_path / "part")
    assert [r["iteration"] for r in first] == [0, 3, 4]  # 4: the end of the 1-epoch run
    resumed, opt = fit(2, tmp_path / "resumed", ckpt_path=tmp_path / "part" / "ckpt" / "last.ckpt")
    # the checkpoint was taken before the end point: the resumed run tracks 4 (refresh), 6, 8,
    # the first of them warm-started from the restored point 3
    assert [r["iteration"] for r in resumed] == [4, 6, 8]
    assert [r.get("refreshed", False) for r in resumed] == [True, False, False]
    assert resumed[0]["warm"] and "angles" in resumed[0]
    for a, b in zip(resumed, whole[2:]):
        assert a["iteration"] == b["iteration"]
        np.testing.assert_allclose(a["eigenvalues"], b["eigenvalues"], rtol=1e-6)
    assert opt.basis_version == whole_opt.basis_version == 2


def test_lightning_with_plain_sgd_only_tracks(tmp_path):
    from sharpest.integrations.lightning import SharpestCallback

    class PlainSGD(TinyModule):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.2)

    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    callback = SharpestCallback((x, y), nn.CrossEntropyLoss(), k=2, every=1)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[callback],
    )  # fmt: skip
    trainer.fit(PlainSGD(), loader)
    assert [r["iteration"] for r in callback.records] == [0, 1, 2]
    assert not any("refreshed" in r for r in callback.records)


def tiny_bert(attn: str = "sdpa"):
    import transformers

    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=8, num_labels=3,
        attn_implementation=attn,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


@pytest.mark.extras("transformers", "accelerate")  # transformers.Trainer needs accelerate
def test_transformers_callback_tracks_and_drives_nudged_sgd(tmp_path):
    from sharpest.integrations.transformers import SharpestTrainerCallback

    torch.manual_seed(0)
    model = tiny_bert()
    ids = torch.randint(0, 30, (32, 6))
    mask = torch.ones(32, 6, dtype=torch.long)
    mask[::3, 4:] = 0  # some padding
    labels = torch.randint(0, 3, (32,))
    subset = ({"input_ids": ids[:16], "attention_mask": mask[:16]}, labels[:16])
    callback = SharpestTrainerCallback(subset, k=2, every=3, tol=1e-8, sinks=["csv"])
    optimizer = NudgedSGD(model.parameters(), lr=0.1, gamma=0.5, k=2)
    trainer = hf_trainer(model, tmp_path, SequenceDataset(ids, mask, labels), [callback],
                         optimizers=(optimizer, None), num_train_epochs=2,
                         per_device_train_batch_size=8, lr_scheduler_type="constant")
    trainer.train()
    points, refreshed = expected_points()
    assert [r["iteration"] for r in callback.records] == points
    assert [r.get("refreshed", False) for r in callback.records] == refreshed
    assert optimizer.basis_version == 2
    # The last point against the trained weights in an eager-attention copy (another kernel).
    eager = tiny_bert("eager")
    eager.load_state_dict(model.state_dict())
    op = HessianOperator(eager, lambda out, t: nn.functional.cross_entropy(out.logits, t), subset)
    reference = lanczos(op, k=2, tol=1e-10).values
    np.testing.assert_allclose(callback.records[-1]["eigenvalues"], reference, rtol=1e-4)
    csv = pd.read_csv(tmp_path / "sharpest" / "metrics.csv")
    assert csv[(csv.name == "eigenvalues_1")].iteration.tolist() == points
    history = [h for h in trainer.state.log_history if "sharpest/eigen/eigenvalues_1" in h]
    assert [h["step"] for h in history] == points
