"""Scale (issue 24, item 4): the top Hessian eigenpairs of GPT-2-shaped models on a CPU.

Randomly initialised ``transformers.GPT2LMHeadModel``s of GPT-2's shapes (vocabulary 50,257,
context 1,024), from ~10M parameters to GPT-2 small (124M), on a short fixed subset of token
sequences (PTB's training words as token ids when ../shared/data has PTB, else seeded random
ids), scored by the model's own causal loss (position t predicts token t + 1, the mean over
every predicted token). For each shape, in a fresh subprocess (so that peak memory is its own):

- seconds per Hessian-vector product and per gradient on the subset, and their ratio;
- products for the top-1 and the top-5 (``lanczos``, tol 1e-3, the guard on, the basis in
  float32 within ``--basis-gib``);
- peak resident memory of the top-5 solve, against that of one training step (forward,
  backward, an AdamW step) in its own subprocess: the goal is top-5 ≤ 2 × a training step +
  the basis budget.

    python benchmarks/scale.py                  # 10M, 30M, 124M on 4 sequences of 64 tokens
    python benchmarks/scale.py --quick          # a 1M-parameter shape (tests)

Needs ``transformers`` (the ``integrations`` extra). Writes a markdown table to ``--out``
(default benchmarks/results/scale.md) and the rows as CSV beside it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eigensolvers as bench  # noqa: E402

from sharpest.runs.io import atomic_write_text  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scale.md"
#: name: (layers, width, heads); GPT-2's vocabulary and context.
SHAPES = {
    "gpt2-10m": (2, 160, 4),
    "gpt2-30m": (6, 384, 6),
    "gpt2-124m": (12, 768, 12),
    "gpt2-350m": (24, 1024, 16),  # GPT-2 medium's shape; for GPUs (gpu_check.py)
}
QUICK = {"gpt2-1m": (1, 16, 2)}
COLUMNS = ("shape", "parameters", "model_mib", "sequences", "tokens", "product_s",
           "gradient_s", "product_per_gradient", "top1_products", "top5_products",
           "top5_guard_products", "top5_converged", "top5_reason", "top5_basis_rows",
           "top5_lambda1", "top5_seconds", "top5_peak_mib", "train_step_peak_mib",
           "basis_budget_mib", "memory_goal_met")


class CausalLM(nn.Module):
    """The logits of a Hugging Face causal LM, flattened for a token-level loss."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits


def causal_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position t against token t + 1 (the model's own objective)."""
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       input_ids[:, 1:].reshape(-1))


def make_model(shape: tuple[int, int, int], vocab: int, context: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, width, heads = shape
    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab,
                        n_positions=context, attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    config._attn_implementation = "eager"  # double backward through attention
    return CausalLM(GPT2LMHeadModel(config))


def tokens(data_root: Path, sequences: int, length: int, vocab: int) -> tuple[torch.Tensor, str]:
    ptb = data_root / "ptb" / "ptb.train.txt"
    if ptb.exists():
        words = ptb.read_text().replace("\n", " <eos> ").split()[: sequences * length]
        ids: dict[str, int] = {}
        seq = [ids.setdefault(w, len(ids)) % vocab for w in words]
        return torch.tensor(seq).view(sequences, length), f"PTB words ({ptb})"
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (sequences, length), generator=g), "seeded random ids"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class BasisRows:
    """The most rows the solve's basis and one guard chain held at once, over a solve: what a
    ``max_basis_bytes`` of that many rows would have had to allow.
    """

    def __init__(self) -> None:
        from sharpest.curvature import lanczos_basis

        self.module, self.stores = lanczos_basis, []
        self.original = lanczos_basis.RowStore.__init__

    def __enter__(self) -> BasisRows:
        original, stores = self.original, self.stores

        def record(store, *args, **kwargs):
            original(store, *args, **kwargs)
            stores.append(store)

        self.module.RowStore.__init__ = record
        return self

    def __exit__(self, *exc) -> None:
        self.module.RowStore.__init__ = self.original

    @property
    def rows(self) -> int:
        # stores hold whole blocks of RowStore.BLOCK rows, allocated as they are needed
        held = [sum(len(b) for b in s.blocks) for s in self.stores]
        return held[0] + max(held[1:], default=0) if held else 0


def measure_solve(a: argparse.Namespace, name: str) -> dict:
    """One shape's products, gradient and solves (run in its own process)."""
    from sharpest.curvature import HessianOperator, lanczos

    shapes = QUICK if a.quick else SHAPES
    model = make_model(shapes[name], a.vocab, a.context)
    x, source = tokens(a.data_root, a.sequences, a.length, a.vocab)
    op = HessianOperator(model, causal_loss, (x, x))
    n = op.size
    v = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op.matvec(v)  # builds the cached first-order graph
    start = time.perf_counter()
    for _ in range(a.repeats):
        op.matvec(v)
    product_s = (time.perf_counter() - start) / a.repeats
    start = time.perf_counter()
    for _ in range(a.repeats):
        op.gradient()
    gradient_s = (time.perf_counter() - start) / a.repeats
    budget = int(a.basis_gib * 2**30)
    top1 = lanczos(op, k=1, tol=a.tol, basis_dtype=torch.float32, max_basis_bytes=budget)
    start = time.perf_counter()
    with BasisRows() as held:
        top5 = lanczos(op, k=5, tol=a.tol, basis_dtype=torch.float32, max_basis_bytes=budget,
                       max_matvecs=a.max_matvecs)
    return dict(shape=name, parameters=n, model_mib=n * 4 / 2**20, sequences=a.sequences,
                tokens=a.sequences * a.length, product_s=product_s, gradient_s=gradient_s,
                product_per_gradient=product_s / gradient_s, top1_products=top1.n_matvecs,
                top5_products=top5.n_matvecs, top5_guard_products=top5.guard_matvecs,
                top5_converged=top5.converged, top5_reason=top5.reason or "",
                top5_basis_rows=held.rows, top5_lambda1=float(top5.values[0]),
                top5_seconds=time.perf_counter() - start, top5_peak_mib=peak_mib(),
                basis_budget_mib=budget / 2**20, source=source)


def measure_train_step(a: argparse.Namespace, name: str) -> dict:
    """Peak memory of one training step (forward, backward, AdamW) in its own process."""
    shapes = QUICK if a.quick else SHAPES
    model = make_model(shapes[name], a.vocab, a.context)
    x, _ = tokens(a.data_root, a.sequences, a.length, a.vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):
        opt.zero_grad()
        causal_loss(model(x), x).backward()
        opt.step()
    return dict(train_step_peak_mib=peak_mib())


def _child(a: argparse.Namespace, what: str, name: str) -> dict:
    args = [sys.executable, __file__, "--child", what, "--shape", name, "--threads",
            str(a.threads), "--sequences", str(a.sequences), "--length", str(a.length),
            "--tol", str(a.tol), "--basis-gib", str(a.basis_gib), "--repeats", str(a.repeats),
            "--data-root", str(a.data_root)] + (["--quick"] if a.quick else [])
    if a.max_matvecs:
        args += ["--max-matvecs", str(a.max_matvecs)]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 1M-parameter shape, seconds")
    p.add_argument("--shapes", help="comma-separated names of SHAPES (default all)")
    p.add_argument("--sequences", type=int, default=4)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--basis-gib", type=float, default=4.0)
    p.add_argument("--max-matvecs", type=int)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", type=Path, default=bench.DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", choices=("solve", "train"), help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.vocab, a.context = (512, 64) if a.quick else (50257, 1024)
    if a.quick:
        a.sequences, a.length, a.repeats = 2, 16, 1
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.child:
        row = measure_solve(a, a.shape) if a.child == "solve" else measure_train_step(a, a.shape)
        print(json.dumps(row))
        return 0
    names = list(QUICK) if a.quick else [n for n in SHAPES if n != "gpt2-350m"]
    if a.shapes:
        names = [s for s in a.shapes.split(",") if s in (QUICK if a.quick else SHAPES)]
    rows = []
    for name in names:
        row = _child(a, "solve", name)
        row.update(_child(a, "train", name))
        goal = 2 * row["train_step_peak_mib"] + row["basis_budget_mib"]
        row["memory_goal_met"] = row["top5_peak_mib"] <= goal
        rows.append(row)
        bench.log(f"{name}: {row['parameters']:,} parameters, product {row['product_s']:.2f} s "
                  f"({row['product_per_gradient']:.2f} gradients), top-5 "
                  f"{row['top5_products']} products, peak {row['top5_peak_mib']:.0f} MiB "
                  f"(training step {row['train_step_peak_mib']:.0f} MiB)")
        write(a, rows)
    return 0


def write(a: argparse.Namespace, rows: list[dict]) -> None:
    source = rows[0].get("source", "") if rows else ""
    lines = [
        "# Scale: top Hessian eigenpairs of GPT-2-shaped models on this CPU",
        "",
        f"`python benchmarks/scale.py{' --quick' if a.quick else ''}`: {a.sequences} sequences "
        f"of {a.length} tokens ({source}), the model's own causal loss, {a.threads} threads; "
        f"lanczos tol {a.tol}, guard on, basis float32 within {a.basis_gib:g} GiB. Peak memory "
        "is the process's maximum resident set; the goal: top-5 ≤ 2 × a training step "
        "(forward, backward, AdamW) + the basis budget.",
        "",
        "| shape | parameters | s / product | products / gradient | top-1 products | "
        "top-5 products (guard) | basis rows held | λ₁ | top-5 s | top-5 peak MiB | "
        "training step MiB | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['parameters']:,} | {r['product_s']:.2f} | "
            f"{r['product_per_gradient']:.2f} | {r['top1_products']} | {r['top5_products']} "
            f"({r['top5_guard_products']}){'' if r['top5_converged'] else ', unconverged'} | "
            f"{r['top5_basis_rows']} | {r['top5_lambda1']:.4g} | {r['top5_seconds']:.0f} | "
            f"{r['top5_peak_mib']:.0f} | "
            f"{r['train_step_peak_mib']:.0f} | {'met' if r['memory_goal_met'] else 'NOT met'} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, "\n".join(lines) + "\n")
    table = io.StringIO()  # quoted: a solve's reason holds commas
    writer = csv.DictWriter(table, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(a.out.with_suffix(".csv"), table.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
