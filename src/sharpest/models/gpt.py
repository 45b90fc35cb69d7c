r"""A small decoder-only transformer language model (GPT-2's layout, Radford et al. 2019).

Token ids ``(B, T)`` int64 in, next-token logits ``(B, T, V)`` out, ``T ≤ context``; position
``t`` sees tokens ``0 … t`` only (causal self-attention), so with the data's targets shifted by
one token (``sharpest.data``: ``y[t] = x[t + 1]``) the mean cross-entropy over all tokens is
the causal language-modelling loss, the same objective as the word-level LSTM on PTB.

Layout (pre-LN, as GPT-2): token embedding ``E`` (V × w) plus learned positions ``P``
(context × w), dropout, ``layers`` blocks ``x ← x + Attn(LN(x))``, ``x ← x + MLP(LN(x))`` (MLP
w → 4w → w with GELU), a final LayerNorm, and logits ``LN(x) Eᵀ`` (input and output embeddings
tied; no output bias).

Parameter count, with V the vocabulary, w the width, L the layers, c the context:

    N = V·w + c·w + L·(12w² + 13w) + 2w

(per block: two LayerNorms 4w, q/k/v 3w² + 3w, output projection w² + w, MLP 8w² + 5w; the
final LayerNorm 2w; the tied output layer adds nothing). ``heads`` splits w and adds no
parameters. The defaults (w = 128, L = 2, 4 heads, c = 128) on PTB's 10,000 words:
1,280,000 + 16,384 + 2·(196,608 + 1,664) + 256 = 1,693,184.

Attention is ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``; its fused
kernels have no double backward, so Hessian-vector products select the math kernel
(``sharpest.curvature.inputs.double_backward_kernels``, used by every curvature operator).

Initialisation (GPT-2 / nanoGPT): weights and embeddings normal(0, 0.02), the two residual
projections of each block normal(0, 0.02/√(2L)), biases zero, LayerNorms (1, 0).

``weight_decay_on: kernels`` decays the ``nn.Linear`` weights only: not the embeddings (the
output layer is the embedding, used through ``F.linear``), positions, LayerNorms or biases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_probability

__all__ = ["GPT", "build_gpt", "gpt_num_parameters"]

#: Standard deviation of GPT-2's weight initialisation.
INIT_STD = 0.02


def gpt_num_parameters(vocab_size: int, layers: int, width: int, context: int) -> int:
    """``V·w + c·w + L·(12w² + 13w) + 2w``, the trainable parameters of :class:`GPT`."""
    w = width
    return vocab_size * w + context * w + layers * (12 * w * w + 13 * w) + 2 * w


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: q, k, v from one projection, heads of width w/h."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) → (B, heads, T, C/heads)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.dropout(self.proj(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """Decoder-only transformer language model (module docstring: layout, count, init).

    Args:
        vocab_size: V, the number of token ids (the data's ``num_classes``).
        layers: transformer blocks L.
        width: embedding width w (a multiple of ``heads``).
        heads: attention heads.
        context: the longest sequence the learned positions cover.
        dropout: on the embeddings, attention weights and residual branches (0: off).
    """

    def __init__(
        self,
        vocab_size: int,
        layers: int = 2,
        width: int = 128,
        heads: int = 4,
        context: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width must be a multiple of heads, got width={width}, "
                             f"heads={heads}")
        self.vocab_size = vocab_size
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context, width)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
        # GPT-2: each residual branch's output scaled by 1/√(number of residual additions).
        residual_std = INIT_STD / math.sqrt(2 * layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, 0.0, residual_std)
            nn.init.normal_(block.proj.weight, 0.0, residual_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for token ids ``(B, T)``, ``T ≤ context``."""
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        T = tokens.shape[1]
        if T > self.context:
            raise ValueError(
                f"sequence of {T} tokens is longer than the model's context ({self.context}); "
                "raise model_options.context or lower data_options.bptt"
            )
        positions = torch.arange(T, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.token_embedding.weight)  # tied output layer


def _positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def build_gpt(
    num_classes: int = 10000,
    *,
    layers: int = 2,
    width: int = 128,
    heads: int = 4,
    context: int = 128,
    dropout: float = 0.0,
) -> GPT:
    """A :class:`GPT` over ``num_classes`` token ids (the vocabulary size)."""
    return GPT(
        num_classes,
        layers=_positive(layers, "layers"),
        width=_positive(width, "width"),
        heads=_positive(heads, "heads"),
        context=_positive(context, "context"),
        dropout=check_probability(dropout, "dropout"),
    )
