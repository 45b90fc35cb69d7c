"""Word-level LSTM language model: Zaremba et al. (2014) "small", as in the authors' code."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_bool, check_probability

LSTMState = tuple[torch.Tensor, torch.Tensor]


class SingleBiasLSTM(nn.LSTM):
    """``nn.LSTM`` with one bias vector per layer and direction, like Keras and TensorFlow.

    PyTorch's LSTM has two biases (``bias_ih`` and ``bias_hh``) that only enter as their sum.
    That reparametrisation changes what the paper measures: the Hessian gains a zero-curvature
    direction (``b_ih − b_hh``) and sees twice the curvature along ``b_ih + b_hh``, and SGD
    takes twice the step on the effective bias. With ``single_bias`` every ``bias_hh*`` becomes
    a zero, non-persistent buffer, so it is neither trained nor seen by the curvature code,
    while the module stays an ``nn.LSTM`` (``isinstance(m, nn.RNNBase)`` still finds it, and the
    kernels receive the buffer in the weight list as usual).
    """

    def __init__(self, *args: object, single_bias: bool = True, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.single_bias = single_bias
        if single_bias and self.bias:
            for name in [n for n in self._flat_weights_names if n.startswith("bias_hh")]:
                zeros = torch.zeros_like(getattr(self, name).detach())
                delattr(self, name)
                self.register_buffer(name, zeros, persistent=False)
            # The RNN kernels read the cached list, which still holds the removed parameters.
            self._init_flat_weights()


class LSTMLanguageModel(nn.Module):
    """Embedding → dropout → stacked LSTM (dropout between layers) → dropout → dense(vocab).

    Input token ids ``(B, T)`` int64, output logits ``(B, T, V)``. Defaults follow the authors'
    Keras code for PTB ("small": 200-dim embedding, 2×200 LSTM, dropout 1 − keep_prob = 0.1,
    untied weights, zero forget-gate bias). Keras initialisation: embedding uniform(±0.05),
    input kernels ``glorot_uniform``, recurrent kernels orthogonal, output ``glorot_uniform``,
    biases zero.

    State: in ``eval()`` every call starts from the zero state, so the loss is a fixed function
    of the parameters (what the Hessian needs). In ``train()`` with ``stateful=True`` the final
    state of a call, detached, is the initial state of the next (Zaremba/Keras "stateful" with
    truncated BPTT over the data's windows); ``reset_state()`` clears it (the training loop
    should call it at every epoch start), and it is cleared automatically when the batch size,
    dtype or device changes. Evaluation calls neither use nor change the carried state.

    ``bidirectional`` is the paper's wording; note that a bidirectional next-token model sees
    its own targets through the backward direction. When stateful, only the forward
    direction's state is carried (the backward state at a window's end belongs to its start).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.1,
        tie_weights: bool = False,
        bidirectional: bool = False,
        stateful: bool = True,
        single_bias: bool = True,
    ) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        if tie_weights and embedding_dim != hidden_size * directions:
            raise ValueError(
                "tie_weights needs embedding_dim == hidden_size × directions, got "
                f"{embedding_dim} and {hidden_size} × {directions}"
            )
        self.vocab_size = vocab_size
        self.stateful = stateful
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = SingleBiasLSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            single_bias=single_bias,
        )
        self.decoder = nn.Linear(hidden_size * directions, vocab_size)
        self._state: LSTMState | None = None

        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for name, p in self.lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                # Keras draws (hidden, 4·hidden) with orthonormal rows; this is its transpose.
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
        if tie_weights:
            self.decoder.weight = self.embedding.weight
        else:
            nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    @property
    def hidden_state(self) -> LSTMState | None:
        """The carried ``(h, c)`` state (each ``(layers·directions, B, hidden)``), or None."""
        return self._state

    @hidden_state.setter
    def hidden_state(self, state: LSTMState | None) -> None:
        self._state = None if state is None else (state[0].detach(), state[1].detach())

    def reset_state(self) -> None:
        """Forget the carried state: the next training call starts from zeros."""
        self._state = None

    def _initial_state(self, batch: int, like: torch.Tensor) -> LSTMState | None:
        if not (self.training and self.stateful) or self._state is None:
            return None
        h, c = self._state
        if h.shape[1] != batch or h.dtype != like.dtype or h.device != like.device:
            self._state = None
            return None
        return h, c

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for token ids ``(B, T)``."""
        if tokens.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(tokens.shape)}")
        x = self.dropout(self.embedding(tokens))
        state = self._initial_state(tokens.shape[0], x)
        out, (h, c) = self.lstm(x, state)
        if self.training and self.stateful:
            h, c = h.detach(), c.detach()
            if self.lstm.bidirectional:
                backward = torch.arange(h.shape[0], device=h.device) % 2 == 1
                h, c = h.clone(), c.clone()
                h[backward] = 0
                c[backward] = 0
            self._state = (h, c)
        return self.decoder(self.dropout(out))


def build_lstm(
    num_classes: int = 10000,
    *,
    embedding_dim: int = 200,
    hidden_size: int = 200,
    num_layers: int = 2,
    dropout: float = 0.1,
    tie_weights: bool = False,
    bidirectional: bool = False,
    stateful: bool = True,
    single_bias: bool = True,
) -> LSTMLanguageModel:
    """PTB "small" LSTM language model; ``num_classes`` is the vocabulary size."""
    for value, name in (
        (embedding_dim, "embedding_dim"),
        (hidden_size, "hidden_size"),
        (num_layers, "num_layers"),
    ):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return LSTMLanguageModel(
        num_classes,
        embedding_dim=int(embedding_dim),
        hidden_size=int(hidden_size),
        num_layers=int(num_layers),
        dropout=check_probability(dropout, "dropout"),
        tie_weights=check_bool(tie_weights, "tie_weights"),
        bidirectional=check_bool(bidirectional, "bidirectional"),
        stateful=check_bool(stateful, "stateful"),
        single_bias=check_bool(single_bias, "single_bias"),
    )
