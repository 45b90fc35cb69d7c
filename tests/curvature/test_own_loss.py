"""The model's own loss as the objective (issue 24, item 1): a causal GPT-2 and a masked BERT
with padding and ``-100`` labels, chunked with uneven counted tokens, against references
computed without sharpest (the model's loss on the whole subset as one batch, its gradient and
its dense Hessian through ``torch.func.functional_call``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch.autograd.functional import hessian
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from sharpest.curvature import GGNOperator, HessianOperator, lanczos, model_loss
from sharpest.curvature.inputs import SummedLossError
from sharpest.curvature.own_loss import ModelLoss, is_causal_lm
from tests.helpers import SequenceDataset, hf_trainer

pytestmark = pytest.mark.extras("transformers")  # selected by CI's `pytest -m extras`
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def tiny_gpt2(attn: str = "eager") -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=40, n_positions=32, bos_token_id=0,
        eos_token_id=0, attn_implementation=attn,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def tiny_bert_mlm() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=24, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=12, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertForMaskedLM(config)


def padded_batch(vocab: int, lengths: list[int], width: int, seed: int = 0):
    """Token ids, an attention mask with right padding, and the padded positions as -100."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def whole_batch_reference(model, inputs, labels, names):
    """The model's own loss on all the data as one batch, and its gradient and dense Hessian
    over the parameters ``names`` (flattened in the model's order), without sharpest."""
    model.eval()
    fixed = dict(model.named_parameters())
    order = list(fixed)
    names = sorted(names, key=order.index)  # the operator's order: model.parameters()
    like = [fixed[n].detach() for n in names]

    def loss(flat):
        params, offset = dict(fixed), 0
        for n, p in zip(names, like):
            params[n] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return functional_call(model, params, (), {**inputs, "labels": labels}).loss

    theta = torch.cat([p.reshape(-1) for p in like]).requires_grad_()
    value = loss(theta)
    (grad,) = torch.autograd.grad(value, theta)
    return float(value.detach()), grad, hessian(loss, theta.detach(), vectorize=True)


def assert_matches(op, value, grad, dense):
    """Up to float32 rounding: Hugging Face's losses cast the logits to float32 (``.float()``)
    even in a float64 model, so chunk sums and one batch round differently at ~1e-7."""
    assert op.loss() == pytest.approx(value, rel=1e-6)
    torch.testing.assert_close(op.gradient(), grad, rtol=1e-5, atol=1e-6 * grad.abs().max())
    torch.testing.assert_close(op.to_dense(), dense, rtol=1e-5, atol=1e-6 * dense.abs().max())


# ---- GPT-2 (causal: labels shifted by the model) -----------------------------------------------

GPT2_PARAMS = ["transformer.h.1.ln_2.weight", "transformer.h.1.mlp.c_proj.bias",
               "transformer.ln_f.weight", "transformer.ln_f.bias"]


def gpt2_data():
    # 7 sequences, 3 per chunk: counted tokens per chunk (after the shift) 18, 6, 8: uneven.
    ids, mask, labels = padded_batch(40, [10, 3, 8, 2, 1, 6, 9], width=10)
    return {"input_ids": ids, "attention_mask": mask}, labels


def test_gpt2_own_loss_is_the_whole_batch_loss_and_its_hessian():
    torch.manual_seed(0)
    model = tiny_gpt2().double()
    inputs, labels = gpt2_data()
    op = HessianOperator(model, None, (inputs, labels), chunk_size=3, params=GPT2_PARAMS)
    assert isinstance(op.loss_fn, ModelLoss) and op.loss_fn.causal
    # Counted tokens: labels[:, 1:] != -100, per chunk of 3 sequences.
    assert op.chunk_units == [9 + 2 + 7, 1 + 0 + 5, 8]
    assert op.num_units == 32 and op.num_examples == 7
    value, grad, dense = whole_batch_reference(model, inputs, labels, GPT2_PARAMS)
    assert_matches(op, value, grad, dense)


def test_chunk_forms_for_the_sampling_error_are_weighted_by_tokens():
    """``chunk_quadratic_forms`` returns the chunks' token counts as their sizes, so the
    weighted mean of the forms is vᵀHv (what ``eigenvalue_stderr`` assumes)."""
    from sharpest.curvature.sampling_error import eigenvalue_stderr

    torch.manual_seed(0)
    model = tiny_gpt2().double()
    inputs, labels = gpt2_data()
    op = HessianOperator(model, None, (inputs, labels), chunk_size=3, params=GPT2_PARAMS)
    _, _, dense = whole_batch_reference(model, inputs, labels, GPT2_PARAMS)
    vectors = torch.randn(2, op.size, dtype=torch.float64)
    forms, sizes = op.chunk_quadratic_forms(vectors)
    assert sizes.tolist() == op.chunk_units
    exact = torch.einsum("ji,ik,jk->j", vectors, dense, vectors)
    torch.testing.assert_close((sizes / sizes.sum()) @ forms, exact, rtol=1e-5,
                               atol=1e-6 * exact.abs().max())
    assert np.isfinite(eigenvalue_stderr(op, vectors)).all()
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        HessianOperator(model, None, (inputs, labels), reduction="sum")


def test_weighting_chunks_by_sequences_is_not_the_whole_batch_loss():
    """The chunks' own Hessians combined with token weights u_c/U give the whole batch's; with
    sequence weights n_c/N (the old rule) they miss it, so the checks above can fail; and an
    operator told to count sequences is refused (its mean would not be the model's)."""
    torch.manual_seed(0)
    model = tiny_gpt2().double()
    inputs, labels = gpt2_data()
    value, _, dense = whole_batch_reference(model, inputs, labels, GPT2_PARAMS)
    parts = [
        HessianOperator(model, None, ({k: v[a:b] for k, v in inputs.items()}, labels[a:b]),
                        params=GPT2_PARAMS)
        for a, b in ((0, 3), (3, 6), (6, 7))
    ]
    tokens = torch.tensor([p.num_units for p in parts], dtype=torch.float64)
    sequences = torch.tensor([p.num_examples for p in parts], dtype=torch.float64)
    losses = torch.tensor([p.loss() for p in parts], dtype=torch.float64)
    hessians = torch.stack([p.to_dense() for p in parts])
    by_token, by_sequence = tokens / tokens.sum(), sequences / sequences.sum()
    assert float(by_token @ losses) == pytest.approx(value, rel=1e-6)
    assert abs(float(by_sequence @ losses) - value) > 1e-3 * abs(value)
    scale = dense.abs().max()
    torch.testing.assert_close(torch.einsum("c,cij->ij", by_token, hessians), dense,
                               rtol=1e-5, atol=1e-6 * scale)
    assert (torch.einsum("c,cij->ij", by_sequence, hessians) - dense).abs().max() > 1e-3 * scale
    with pytest.raises(SummedLossError, match="not the mean over the units counted"):
        HessianOperator(model, None, (inputs, labels), chunk_size=3, params=GPT2_PARAMS,
                        units=lambda t: t.shape[0])


def test_causal_lm_detected_and_a_wrong_shift_refused():
    torch.manual_seed(0)
    gpt2, bert = tiny_gpt2(), tiny_bert_mlm()
    assert is_causal_lm(gpt2) and not is_causal_lm(bert)
    assert model_loss(gpt2, causal=False).causal is False
    inputs, labels = gpt2_data()
    # Counting the unshifted tokens weights the halves of the first chunk wrongly: refused.
    with pytest.raises(SummedLossError, match="not the mean over the units counted"):
        HessianOperator(gpt2, model_loss(gpt2, causal=False), (inputs, labels), chunk_size=3)


def test_own_loss_needs_mapping_inputs_and_a_loss_in_the_outputs():
    torch.manual_seed(0)
    mlp = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="add labels="):
        HessianOperator(mlp, None, (torch.randn(4, 3), torch.randint(0, 2, (4,))))

    class NoLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, labels=None):
            return self.lin(x)

    with pytest.raises(TypeError, match="without one"):
        HessianOperator(NoLoss(), None, ({"x": torch.randn(4, 3)}, torch.zeros(4)))


def test_ggn_refuses_the_models_own_loss():
    inputs, labels = gpt2_data()
    with pytest.raises(ValueError, match="hides them in .loss"):
        GGNOperator(tiny_gpt2(), None, (inputs, labels))


# ---- BERT masked LM (no shift; padding and unmasked positions are -100) ------------------------

BERT_PARAMS = ["bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.output.dense.bias",
               "cls.predictions.transform.dense.bias", "cls.predictions.bias"]


def test_bert_masked_lm_own_loss_is_the_whole_batch_loss_and_its_hessian():
    torch.manual_seed(1)
    model = tiny_bert_mlm().double()
    ids, mask, _ = padded_batch(24, [12, 4, 9, 2, 7, 12, 5, 3], width=12, seed=1)
    # Labels only at "masked" positions inside the sequence: uneven counts per sequence.
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.4) & (mask > 0)
    chosen[:, 0] = mask[:, 0] > 0  # every sequence has at least one
    labels = ids.masked_fill(~chosen, -100)
    inputs = {"input_ids": ids, "attention_mask": mask}
    op = HessianOperator(model, None, (inputs, labels), chunk_size=3, params=BERT_PARAMS)
    assert not op.loss_fn.causal
    counts = (labels != -100).sum(1)
    assert op.chunk_units == [float(counts[i : i + 3].sum()) for i in (0, 3, 6)]
    assert len(set(op.chunk_units)) == 3  # uneven
    value, grad, dense = whole_batch_reference(model, inputs, labels, BERT_PARAMS)
    assert_matches(op, value, grad, dense)


def test_a_chunk_with_no_counted_token_is_left_out():
    torch.manual_seed(1)
    model = tiny_bert_mlm().double()
    ids, mask, labels = padded_batch(24, [5, 4, 6, 3], width=6, seed=3)
    labels[2:] = -100  # the second chunk counts nothing (its mean would be NaN)
    inputs = {"input_ids": ids, "attention_mask": mask}
    op = HessianOperator(model, None, (inputs, labels), chunk_size=2, params=BERT_PARAMS)
    assert len(op.chunks) == 1 and op.num_examples == 4
    assert_matches(op, *whole_batch_reference(model, inputs, labels, BERT_PARAMS))
    with pytest.raises(ValueError, match="no units"):
        HessianOperator(model, None, (inputs, torch.full_like(labels, -100)))


# ---- the transformers callback tracks the Hessian of the Trainer's own loss ---------------------


def top_eigenvalues(loss, params, k):
    """Top-k eigenvalues (largest |λ|, the tracker's order) of the Hessian of the scalar
    ``loss`` over ``params``: Hessian-vector products by double backward, scipy's ``eigsh``;
    no sharpest."""
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params,
                                                                 create_graph=True)])

    def hvp(v):
        v = torch.as_tensor(v.reshape(-1), dtype=flat.dtype)
        hv = torch.autograd.grad(flat @ v, params, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).double().numpy()

    n = flat.numel()
    values = eigsh(LinearOperator((n, n), matvec=hvp, dtype=np.float64), k=k + 2, which="LM",
                   tol=1e-8, return_eigenvectors=False)
    return np.array(sorted(values, key=abs, reverse=True)[:k])


def trainer_top_eigenvalues(trainer, inputs, labels, k):
    """The loss of ``trainer.compute_loss`` on the whole subset as one batch and the top-k
    eigenvalues of its Hessian (:func:`top_eigenvalues`)."""
    model = trainer.model
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    # The math kernel of attention: the fused CPU kernel has no double backward.
    with sdpa_kernel([SDPBackend.MATH]):
        loss = trainer.compute_loss(model, {**inputs, "labels": labels})
        return float(loss.detach()), top_eigenvalues(loss, params, k)


@pytest.mark.slow
def test_transformers_callback_tracks_the_hessian_of_the_trainers_loss(tmp_path):
    pytest.importorskip("accelerate")  # transformers.Trainer needs it
    from sharpest.integrations.transformers import SharpestTrainerCallback, logits_cross_entropy

    torch.manual_seed(0)
    model = tiny_gpt2("sdpa")
    ids, mask, labels = padded_batch(40, [16, 5, 12, 9, 3, 16, 7, 11] * 2, width=16, seed=4)
    subset = ({"input_ids": ids[:8], "attention_mask": mask[:8]}, labels[:8])
    callbacks = {
        "own": SharpestTrainerCallback(subset, k=2, every=3, tol=1e-8, chunk_size=3),
        "old": SharpestTrainerCallback(subset, logits_cross_entropy, k=2, every=3, tol=1e-8,
                                       chunk_size=3),
    }
    trainer = hf_trainer(model, tmp_path, SequenceDataset(ids, mask, labels),
                         list(callbacks.values()), per_device_train_batch_size=4,
                         learning_rate=1e-2)
    trainer.train()
    loss, reference = trainer_top_eigenvalues(trainer, *subset, k=2)
    own = callbacks["own"].records[-1]["eigenvalues"]
    old = callbacks["old"].records[-1]["eigenvalues"]
    # The old default (position t scored against token t, sequences weighted) tracks another
    # loss's Hessian: the check below fails on it (here λ₁ 27.03 against 30.05) ...
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(old, reference, rtol=1e-3)
    assert abs(old[0] - reference[0]) > 0.05 * abs(reference[0])
    # ... and passes on the new default, the model's own loss.
    np.testing.assert_allclose(own, reference, rtol=1e-3)
    op = callbacks["own"].tracker.operator
    assert op.loss() == pytest.approx(loss, rel=1e-5)
    assert lanczos(op, k=1, tol=1e-8).values[0] == pytest.approx(reference[0], rel=1e-3)


@pytest.mark.slow
def test_lightning_callback_tracks_the_hessian_of_the_wrapped_models_own_loss():
    pl = pytest.importorskip("pytorch_lightning")
    from sharpest.integrations.lightning import SharpestCallback

    class Wrapper(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = tiny_bert_mlm()

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    torch.manual_seed(5)
    module = Wrapper()
    ids, mask, _ = padded_batch(24, [12, 4, 9, 2, 7, 12, 5, 3] * 2, width=12, seed=5)
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(6)) < 0.4) & (mask > 0)
    chosen[:, 0] = True
    labels = ids.masked_fill(~chosen, -100)
    subset = ({"input_ids": ids[:8], "attention_mask": mask[:8]}, labels[:8])
    callback = SharpestCallback(subset, k=2, every=2, tol=1e-8, chunk_size=3,
                                model=lambda m: m.model)
    loader = torch.utils.data.DataLoader(SequenceDataset(ids, mask, labels), batch_size=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, loader)
    model = module.model
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(**subset[0], labels=subset[1]).loss  # the whole subset as one batch
    top = top_eigenvalues(loss, params, k=2)
    np.testing.assert_allclose(callback.records[-1]["eigenvalues"], top, rtol=1e-3)


@pytest.mark.slow
def test_transformers_callback_tracks_the_trainers_loss_of_a_masked_lm(tmp_path):
    """A masked LM (no shift): the old default scored the right tokens but weighted the chunks
    by sequences, so with uneven masked tokens per chunk it missed the Trainer's loss too."""
    pytest.importorskip("accelerate")
    from sharpest.integrations.transformers import SharpestTrainerCallback, logits_cross_entropy

    torch.manual_seed(2)
    model = tiny_bert_mlm()
    ids, mask, _ = padded_batch(24, [12, 2, 9, 3, 12, 4, 7, 2] * 2, width=12, seed=7)
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(8)) < 0.5) & (mask > 0)
    chosen[:, 0] = True
    labels = ids.masked_fill(~chosen, -100)
    subset = ({"input_ids": ids[:8], "attention_mask": mask[:8]}, labels[:8])
    own = SharpestTrainerCallback(subset, k=2, every=2, tol=1e-8, chunk_size=2)
    old = SharpestTrainerCallback(subset, logits_cross_entropy, k=2, every=2, tol=1e-8,
                                  chunk_size=2)
    trainer = hf_trainer(model, tmp_path, SequenceDataset(ids, mask, labels), [own, old],
                         per_device_train_batch_size=4, learning_rate=5e-2)
    trainer.train()
    loss, reference = trainer_top_eigenvalues(trainer, *subset, k=2)
    # Measured: λ₁ 21.488 for the Trainer's loss, 21.488 own loss, 22.444 old default.
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(old.records[-1]["eigenvalues"], reference, rtol=1e-3)
    np.testing.assert_allclose(own.records[-1]["eigenvalues"], reference, rtol=1e-3)
    assert own.tracker.operator.loss() == pytest.approx(loss, rel=1e-5)
