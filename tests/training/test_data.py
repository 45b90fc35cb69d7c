"""Tests for sharpest.data: loaders on small fixture files in the official formats, batching,
augmentation, subsets, download verification; integration tests on ../shared/data when present.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tarfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sharpest.data.cifar as cifar_mod
import sharpest.data.load as load_mod
import sharpest.data.ptb as ptb_mod
from sharpest.data import (
    DataError,
    crop_flip,
    default_root,
    download_url,
    extract_archive,
    load_data,
    random_crop_flip,
    split_indices,
    zaremba_batches,
)
from sharpest.data import mnist1d as mnist1d_mod

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"

# --------------------------------------------------------------------------------------------
# Fixture files in the official formats
# --------------------------------------------------------------------------------------------

PER_BATCH = 20  # images per CIFAR-10 training batch in the fixtures
N_TEST = 10


def _images(start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random uint8 images whose first two bytes encode a global index, to track them."""
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    idx = np.arange(start, start + n)
    data[:, 0] = idx % 256
    data[:, 1] = idx // 256
    return data


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 with bytes keys: what the official (Python 2) files contain.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(root: Path, batches: tuple[int, ...] = (1, 2, 3, 4, 5)) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b in batches:
        start = (b - 1) * PER_BATCH
        labels = [int(i % 10) for i in range(start, start + PER_BATCH)]
        _dump(
            folder / f"data_batch_{b}",
            {
                b"batch_label": f"training batch {b} of 5".encode(),
                b"labels": labels,
                b"data": _images(start, PER_BATCH, rng),
                b"filenames": [f"img{i}.png".encode() for i in range(PER_BATCH)],
            },
        )
    _dump(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int((i * 3) % 10) for i in range(N_TEST)],
            b"data": _images(1000, N_TEST, rng),
            b"filenames": [b"t.png"] * N_TEST,
        },
    )
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": PER_BATCH})
    return folder


def make_cifar100(root: Path, n_train: int = 30, n_test: int = 8) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n, start in (("train", n_train, 0), ("test", n_test, 500)):
        fine = [int((7 * i) % 100) for i in range(n)]
        _dump(
            folder / name,
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": name.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": _images(start, n, rng),
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return folder


PTB_TRAIN = " the cat sat on the mat \n the dog sat \n a cat ran \n"
PTB_VALID = " the cat ran \n"
PTB_TEST = " a dog sat on the mat \n"


def make_ptb(root: Path, train: str = PTB_TRAIN) -> Path:
    folder = root / "ptb"
    folder.mkdir(parents=True)
    (folder / "ptb.train.txt").write_text(train)
    (folder / "ptb.valid.txt").write_text(PTB_VALID)
    (folder / "ptb.test.txt").write_text(PTB_TEST)
    return folder


def _raw_index(x: torch.Tensor) -> np.ndarray:
    """Recover the global index coded in the first two bytes of unnormalised [0, 1] images."""
    flat = (x.reshape(x.shape[0], -1)[:, :2] * 255).round().long().numpy()
    return flat[:, 0] + 256 * flat[:, 1]


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    make_cifar10(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_shapes_labels_and_names(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    assert b.task == "classification" and b.num_classes == 10 and b.input_shape == (3, 32, 32)
    assert b.train[0].shape == (5 * PER_BATCH, 3, 32, 32) and b.train[0].dtype == torch.float32
    assert b.test[0].shape == (N_TEST, 3, 32, 32) and b.val is None
    assert b.train[1].dtype == torch.int64
    assert b.train[1].tolist() == [i % 10 for i in range(5 * PER_BATCH)]
    assert b.test[1].tolist() == [(i * 3) % 10 for i in range(N_TEST)]
    assert b.class_names is not None and b.class_names[0] == "airplane"
    # The official folder itself is accepted as root, and names are case/dash-insensitive.
    b2 = load_data("CIFAR-10", root=cifar_root / "cifar-10-batches-py")
    assert torch.equal(b2.train[0], b.train[0])


def test_cifar10_channel_normalisation_uses_training_statistics(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    x = b.train[0]
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-5, rtol=0)
    raw = load_data("cifar10", root=cifar_root, normalize="none")
    assert float(raw.train[0].min()) >= 0.0 and float(raw.train[0].max()) <= 1.0
    torch.testing.assert_close(b.test[0], (raw.test[0] - b.mean) / b.std)


def test_cifar10_pixel_normalisation(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root, normalize="pixel")
    x = b.train[0]
    torch.testing.assert_close(x.mean(dim=0), torch.zeros(3, 32, 32), atol=1e-5, rtol=0)
    assert abs(float(x.std(correction=0)) - 1.0) < 1e-4
    with pytest.raises(DataError, match="normalize"):
        load_data("cifar10", root=cifar_root, normalize="bogus")


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    fine = load_data("cifar100", root=tmp_path)
    assert fine.num_classes == 100 and fine.train[0].shape == (30, 3, 32, 32)
    assert fine.train[1].tolist() == [(7 * i) % 100 for i in range(30)]
    assert fine.class_names is not None and fine.class_names[3] == "fine3"
    coarse = load_data("cifar100", root=tmp_path, label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.class_names is not None
    assert coarse.train[1].tolist() == [((7 * i) % 100) // 5 for i in range(30)]
    assert coarse.test[0].shape == (8, 3, 32, 32)
    with pytest.raises(DataError, match="label_mode"):
        load_data("cifar100", root=tmp_path, label_mode="medium")


def test_partial_folder_errors_or_warns_naming_missing_files(tmp_path: Path) -> None:
    make_cifar10(tmp_path, batches=(1, 2))
    with pytest.raises(DataError, match="data_batch_3.*allow_partial"):
        load_data("cifar10", root=tmp_path)
    with pytest.warns(UserWarning, match="data_batch_3, data_batch_4, data_batch_5"):
        b = load_data("cifar10", root=tmp_path, allow_partial=True)
    assert b.num_train == 2 * PER_BATCH
    assert b.info["missing_files"] == ["data_batch_3", "data_batch_4", "data_batch_5"]


def test_missing_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*download=true"):
        load_data("cifar10", root=tmp_path)
    with pytest.raises(DataError, match=r"ptb\.train\.txt.*download=true"):
        load_data("ptb", root=tmp_path)


def test_missing_test_batch_is_named(cifar_root: Path) -> None:
    (cifar_root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_data("cifar10", root=cifar_root)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "empty", "label_out_of_range", "wrong_kind", "short_labels", "evil"],
)
def test_bad_batch_files_raise_data_error_naming_the_file(cifar_root: Path, damage: str) -> None:
    path = cifar_root / "cifar-10-batches-py" / "data_batch_2"
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a pickle at all" * 10)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "label_out_of_range":
        obj = pickle.loads(raw, encoding="bytes")
        obj[b"labels"][3] = 10
        _dump(path, obj)
    elif damage == "wrong_kind":  # a CIFAR-100 batch where a CIFAR-10 one belongs
        obj = pickle.loads(raw, encoding="bytes")
        obj[b"fine_labels"] = obj.pop(b"labels")
        _dump(path, obj)
    elif damage == "short_labels":
        obj = pickle.loads(raw, encoding="bytes")
        obj[b"labels"] = obj[b"labels"][:-1]
        _dump(path, obj)
    else:  # a pickle that would run code when loaded by a plain pickle.load

        class Evil:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                return (os.system, ("echo pwned",))

        path.write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="data_batch_2"):
        load_data("cifar10", root=cifar_root)


def test_unknown_name_and_option(cifar_root: Path) -> None:
    with pytest.raises(DataError, match="unknown data set"):
        load_data("imagenet", root=cifar_root)
    with pytest.raises(DataError, match="bogus"):
        load_data("cifar10", root=cifar_root, bogus=1)


# --------------------------------------------------------------------------------------------
# Batching, augmentation, subsets, validation split
# --------------------------------------------------------------------------------------------


def test_train_batches_are_a_seeded_drop_last_permutation(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root, normalize="none", augment_pad=0, flip=False)
    assert b.augmentation is None
    assert b.num_batches(32) == 3 and len(b.train_batches(32)) == 3
    seen = []
    for x, y in b.train_batches(32, epoch=0, seed=1):
        assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
        seen.append(_raw_index(x))
        # labels travel with their images
        assert y.tolist() == [int(i % 10) for i in seen[-1]]
    idx = np.concatenate(seen)
    assert len(set(idx.tolist())) == 96  # distinct examples, 4 dropped
    again = np.concatenate([_raw_index(x) for x, _ in b.train_batches(32, epoch=0, seed=1)])
    other_epoch = np.concatenate([_raw_index(x) for x, _ in b.train_batches(32, epoch=1, seed=1)])
    other_seed = np.concatenate([_raw_index(x) for x, _ in b.train_batches(32, epoch=0, seed=2)])
    assert np.array_equal(idx, again)
    assert not np.array_equal(idx, other_epoch) and not np.array_equal(idx, other_seed)
    with pytest.raises(ValueError, match="batch_size"):
        list(b.train_batches(1000))


def test_resume_start_equals_slicing_the_full_epoch(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    full = list(b.train_batches(16, epoch=3, seed=7))
    assert len(full) == 6
    resumed = list(b.train_batches(16, epoch=3, seed=7, start=4))
    assert len(resumed) == 2 and len(b.train_batches(16, epoch=3, seed=7, start=4)) == 2
    for (xa, ya), (xb, yb) in zip(full[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(b.train_batches(16, epoch=3, seed=7, start=6)) == []


def test_augmentation_same_order_deterministic_and_really_augments(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    aug = list(b.train_batches(20, epoch=0, seed=3, augment=True, device="cpu"))
    aug2 = list(b.train_batches(20, epoch=0, seed=3, augment=True))
    plain = list(b.train_batches(20, epoch=0, seed=3, augment=False))
    for (xa, ya), (xa2, _), (xp, yp) in zip(aug, aug2, plain, strict=True):
        assert xa.shape == xp.shape and torch.equal(ya, yp)  # augmentation keeps the order
        assert torch.equal(xa, xa2)  # same seed, same augmentation
    changed = sum(not torch.equal(xa, xp) for (xa, _), (xp, _) in zip(aug, plain, strict=True))
    assert changed == len(aug)
    # Padding uses the normalised value of a black pixel.
    fill = b.augmentation["fill"]
    torch.testing.assert_close(fill, (-b.mean / b.std).flatten())


def test_crop_flip_identity_flip_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g)
    centre = torch.full((4,), 2)
    no = torch.zeros(4, dtype=torch.bool)
    yes = torch.ones(4, dtype=torch.bool)
    assert torch.equal(crop_flip(x, centre, centre, no, pad=2), x)
    assert torch.equal(crop_flip(x, centre, centre, yes, pad=2), x.flip(-1))
    # dy = pad + 1: content moves up one row, the bottom row is padding.
    down = crop_flip(x, centre + 1, centre, no, pad=2, fill=-5.0)
    assert torch.equal(down[:, :, :-1], x[:, :, 1:])
    assert torch.all(down[:, :, -1] == -5.0)
    # dx = 0: content moves right by pad columns, left columns padding (per-channel fill).
    fill = torch.tensor([1.0, 2.0, 3.0])
    right = crop_flip(x, centre, torch.zeros(4, dtype=torch.long), no, pad=2, fill=fill)
    assert torch.equal(right[..., 2:], x[..., :-2])
    assert torch.equal(right[..., :2], fill.view(1, 3, 1, 1).expand(4, 3, 8, 2))
    # Crop and flip compose as: crop the padded image, then mirror the crop.
    zero = torch.zeros(4, dtype=torch.long)
    both = crop_flip(x, centre, zero, yes, pad=2)
    assert torch.equal(both, crop_flip(x, centre, zero, no, pad=2).flip(-1))


def test_random_crop_flip_is_seeded() -> None:
    x = torch.randn(64, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_train_subset_is_the_first_examples(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root, normalize="none", train_subset=25)
    assert b.num_train == 25 and _raw_index(b.train[0]).tolist() == list(range(25))
    with pytest.raises(DataError, match="train_subset"):
        load_data("cifar10", root=cifar_root, train_subset=1000)


def test_validation_split_is_seeded_and_disjoint(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root, normalize="none", val_size=0.2, seed=4)
    assert b.val is not None and b.num_train == 80 and b.val[0].shape[0] == 20
    tr, va = set(_raw_index(b.train[0]).tolist()), set(_raw_index(b.val[0]).tolist())
    assert not tr & va and tr | va == set(range(100))
    assert b.val[1].tolist() == [i % 10 for i in _raw_index(b.val[0])]
    same = load_data("cifar10", root=cifar_root, normalize="none", val_size=20, seed=4)
    assert torch.equal(same.val[0], b.val[0])  # a count and the same fraction agree
    other = load_data("cifar10", root=cifar_root, normalize="none", val_size=20, seed=5)
    assert not torch.equal(other.val[0], b.val[0])
    # train_subset applies after the hold-out, which therefore does not depend on it.
    sub = load_data(
        "cifar10", root=cifar_root, normalize="none", val_size=20, seed=4, train_subset=10
    )
    assert torch.equal(sub.val[0], b.val[0]) and torch.equal(sub.train[0], b.train[0][:10])
    # Normalisation statistics come from the training split only.
    n = load_data("cifar10", root=cifar_root, val_size=20, seed=4)
    torch.testing.assert_close(n.train[0].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="val_size"):
        split_indices(10, val_size=10)
    with pytest.raises(DataError, match="val_size"):
        split_indices(10, val_size=1.5)


def test_hessian_subset_fixed_seeded_never_augmented(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    x, y = b.hessian_subset(0.1, seed=0)
    assert x.shape[0] == 10
    x2, _ = b.hessian_subset(0.1, seed=0)
    x3, _ = b.hessian_subset(10, seed=1)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    rows = {tuple(r.flatten()[:8].tolist()): i for i, r in enumerate(b.train[0])}
    for xi, yi in zip(x, y, strict=True):
        j = rows[tuple(xi.flatten()[:8].tolist())]
        assert torch.equal(b.train[0][j], xi) and int(b.train[1][j]) == int(yi)
    assert b.hessian_subset(1.0)[0].shape[0] == b.num_train
    with pytest.raises(ValueError, match="hessian subset"):
        b.hessian_subset(1000)


def test_evaluate_batches_and_loss(cifar_root: Path) -> None:
    b = load_data("cifar10", root=cifar_root)
    parts = list(b.evaluate_batches("test", batch_size=4))
    assert [p[0].shape[0] for p in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([p[0] for p in parts]), b.test[0])
    with pytest.raises(ValueError, match="val_size"):
        b.evaluate_batches("val")
    logits = torch.randn(5, 10)
    targets = torch.tensor([0, 1, 2, 3, 9])
    torch.testing.assert_close(b.loss_fn(logits, targets), F.cross_entropy(logits, targets))


# --------------------------------------------------------------------------------------------
# Penn Treebank
# --------------------------------------------------------------------------------------------


def test_ptb_vocabulary_streams_and_windows(tmp_path: Path) -> None:
    make_ptb(tmp_path)
    b = load_data("ptb", root=tmp_path, bptt=3)
    assert b.task == "language_model" and b.input_shape == (3,)
    # Counts: the 3, <eos> 3, cat 2, sat 2; then ties alphabetically.
    assert b.vocab[:4] == ["<eos>", "the", "cat", "sat"]
    assert b.num_classes == len(b.vocab) == 9
    w2i = b.word_to_id
    words = "the cat sat on the mat <eos> the dog sat <eos> a cat ran <eos>".split()
    assert b.streams["train"].tolist() == [w2i[w] for w in words]
    assert b.streams["val"].tolist() == [w2i[w] for w in "the cat ran <eos>".split()]
    assert b.info["tokens"] == {"train": 15, "val": 4, "test": 7}
    x, y = b.train
    assert x.shape == (4, 3)  # (15 - 1) // 3 windows
    s = b.streams["train"]
    assert torch.equal(x.flatten(), s[:12]) and torch.equal(y.flatten(), s[1:13])
    logits = torch.randn(2, 3, b.num_classes)
    tgt = torch.randint(0, b.num_classes, (2, 3))
    torch.testing.assert_close(
        b.loss_fn(logits, tgt), F.cross_entropy(logits.reshape(6, -1), tgt.reshape(6))
    )
    sub = load_data("ptb", root=tmp_path, bptt=3, train_subset=2)
    assert sub.num_train == 2 and sub.streams["train"].numel() == 7
    with pytest.raises(DataError, match="val_size"):
        load_data("ptb", root=tmp_path, val_size=0.1)


def test_zaremba_order_matches_hand_built_expectation() -> None:
    stream = torch.arange(23)
    # batch_size 2: rows [0..10] and [11..21] (token 22 dropped); bptt 3: (11 - 1) // 3 = 3.
    got = list(zaremba_batches(stream, batch_size=2, bptt=3))
    expected = [
        ([[0, 1, 2], [11, 12, 13]], [[1, 2, 3], [12, 13, 14]]),
        ([[3, 4, 5], [14, 15, 16]], [[4, 5, 6], [15, 16, 17]]),
        ([[6, 7, 8], [17, 18, 19]], [[7, 8, 9], [18, 19, 20]]),
    ]
    assert [(x.tolist(), y.tolist()) for x, y in got] == expected
    assert [x.tolist() for x, _ in zaremba_batches(stream, 2, 3, start=2)] == [expected[2][0]]


def test_ptb_train_batches_zaremba_and_resume(tmp_path: Path) -> None:
    train = " ".join(f"w{i % 13}" for i in range(200)).replace("w0 ", "w0 \n ")
    make_ptb(tmp_path, train=train + " the cat ran on a dog sat mat \n")
    b = load_data("ptb", root=tmp_path, bptt=4)
    s = b.streams["train"]
    length = s.numel() // 3
    rows = s[: 3 * length].reshape(3, length)
    batches = list(b.train_batches(3, epoch=5, seed=9))
    assert len(batches) == b.num_batches(3) == (length - 1) // 4
    for i, (x, y) in enumerate(batches):
        assert torch.equal(x, rows[:, 4 * i : 4 * i + 4])
        assert torch.equal(y, rows[:, 4 * i + 1 : 4 * i + 5])
    resumed = list(b.train_batches(3, epoch=5, seed=9, start=2))
    assert all(torch.equal(a[0], c[0]) for a, c in zip(batches[2:], resumed, strict=True))
    val = list(b.stream_batches("val", 1))
    assert len(val) == 0  # the 4-token validation stream is shorter than one window + 1


def test_ptb_bad_files(tmp_path: Path) -> None:
    folder = make_ptb(tmp_path)
    (folder / "ptb.test.txt").unlink()
    with pytest.raises(DataError, match="ptb.test.txt"):
        load_data("ptb", root=tmp_path)
    (folder / "ptb.test.txt").write_bytes(b"\xff\xfe\x00garbage\x00")
    with pytest.raises(DataError, match="ptb.test.txt"):
        load_data("ptb", root=tmp_path)
    # Out-of-vocabulary word and no <unk> to map it to.
    (folder / "ptb.test.txt").write_text(" zebra \n")
    with pytest.raises(DataError, match=r"ptb\.test\.txt.*zebra"):
        load_data("ptb", root=tmp_path)
    # With <unk> in the training vocabulary, unknown words map to it.
    (folder / "ptb.train.txt").write_text(PTB_TRAIN + " <unk> \n")
    b = load_data("ptb", root=tmp_path)
    assert b.streams["test"].tolist()[0] == b.word_to_id["<unk>"]


# --------------------------------------------------------------------------------------------
# Downloads: md5 verification and atomic extraction, on local files only
# --------------------------------------------------------------------------------------------


def _make_archive(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    make_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_extract_archive_verifies_md5_and_is_atomic(tmp_path: Path) -> None:
    archive, md5 = _make_archive(tmp_path)
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        extract_archive(archive, dest, "cifar-10-batches-py", md5="0" * 32)
    assert not (dest / "cifar-10-batches-py").exists()
    truncated = tmp_path / "short.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(DataError, match="short.tar.gz"):
        extract_archive(truncated, dest, "cifar-10-batches-py")
    assert not (dest / "cifar-10-batches-py").exists()
    out = extract_archive(archive, dest, "cifar-10-batches-py", md5=md5)
    assert out == dest / "cifar-10-batches-py" and (out / "data_batch_5").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # no temp left
    assert load_data("cifar10", root=dest).num_train == 5 * PER_BATCH


def test_extract_archive_refuses_unsafe_members(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="unsafe"):
        extract_archive(archive, tmp_path / "d", "x")
    assert not (tmp_path / "escaped.txt").exists()


def test_download_path_end_to_end_with_local_urls(tmp_path: Path, monkeypatch) -> None:
    archive, md5 = _make_archive(tmp_path)
    spec = cifar_mod.CIFAR10
    monkeypatch.setattr(load_mod, "CIFAR10", replace(spec, url=archive.as_uri(), md5=md5))
    b = load_data("cifar10", root=tmp_path / "dl", download=True)
    assert b.num_train == 5 * PER_BATCH
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["cifar-10-batches-py"]

    monkeypatch.setattr(load_mod, "CIFAR10", replace(spec, url=archive.as_uri(), md5="f" * 32))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_data("cifar10", root=tmp_path / "dl2", download=True)
    assert not (tmp_path / "dl2" / "cifar-10-batches-py").exists()

    gone = replace(spec, url=(tmp_path / "nowhere.tgz").as_uri())
    monkeypatch.setattr(load_mod, "CIFAR10", gone)
    with pytest.raises(DataError, match="could not download.*no network"):
        load_data("cifar10", root=tmp_path / "dl3", download=True)


def test_ptb_download_verifies_each_file(tmp_path: Path, monkeypatch) -> None:
    src = make_ptb(tmp_path / "mirror")
    md5s = {
        k: hashlib.md5((src / f).read_bytes()).hexdigest()
        for k, (f, _) in ptb_mod.PTB_FILES.items()
    }
    files = {k: (f, md5s[k]) for k, (f, _) in ptb_mod.PTB_FILES.items()}
    monkeypatch.setattr(ptb_mod, "PTB_URL", src.as_uri() + "/")
    monkeypatch.setattr(ptb_mod, "PTB_FILES", files)
    b = load_data("ptb", root=tmp_path / "dl", download=True)
    assert b.info["tokens"]["train"] == 15
    files["test"] = ("ptb.test.txt", "0" * 32)
    with pytest.raises(DataError, match=r"ptb\.test\.txt"):
        load_data("ptb", root=tmp_path / "dl2", download=True)
    assert not (tmp_path / "dl2" / "ptb" / "ptb.test.txt").exists()
    assert [p.name for p in (tmp_path / "dl2" / "ptb").iterdir() if p.name.startswith(".")] == []


def test_download_url_local_file(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"hello")
    md5 = hashlib.md5(b"hello").hexdigest()
    out = download_url(src.as_uri(), tmp_path / "out" / "b.bin", md5=md5)
    assert out.read_bytes() == b"hello"


def test_default_root_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SHARPEST_DATA", str(tmp_path))
    assert default_root() == tmp_path
    make_cifar10(tmp_path)
    assert load_data("cifar10").num_train == 5 * PER_BATCH
    monkeypatch.delenv("SHARPEST_DATA")
    assert default_root() == Path("~/.cache/sharpest/data").expanduser()


# --------------------------------------------------------------------------------------------
# MNIST-1D (generated locally)
# --------------------------------------------------------------------------------------------


def test_mnist1d_default_generated_cached_and_rng_neutral(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mnist1d_mod, "_MEMORY", {})
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002 - checking that the legacy global state is untouched
    before = (random.random(), np.random.random())  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    b = load_data("mnist1d", root=tmp_path, val_size=500, seed=0)
    assert (random.random(), np.random.random()) == before  # noqa: NPY002
    assert b.num_train == 3500 and b.val[0].shape == (500, 40) and b.test[0].shape == (1000, 40)
    assert b.input_shape == (40,) and b.num_classes == 10 and b.train[0].dtype == torch.float32
    assert set(b.train[1].unique().tolist()) == set(range(10))
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1
    # A fresh process would read the cache file: emulate by clearing the in-memory copy.
    monkeypatch.setattr(mnist1d_mod, "_MEMORY", {})
    monkeypatch.setattr(mnist1d_mod, "_generate", lambda *a: pytest.fail("regenerated"))
    full = load_data("mnist1d", root=tmp_path)
    assert full.num_train == 4000
    tr = {tuple(r.tolist()) for r in full.train[0][:, :6]}
    assert all(tuple(r.tolist()) in tr for r in b.val[0][:, :6])
    batches = list(full.train_batches(128, epoch=0, seed=0))
    assert len(batches) == 31 and batches[0][0].shape == (128, 40)


def test_mnist1d_more_samples_option(tmp_path: Path) -> None:
    b = load_data("mnist1d", root=tmp_path, num_samples=1000, cache=False)
    assert b.num_train == 800 and b.test[0].shape[0] == 200
    assert not (tmp_path / "mnist1d").exists()


# --------------------------------------------------------------------------------------------
# Integration with the shared real data (skipped when ../shared/data is absent)
# --------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_ptb_counts() -> None:
    if not (SHARED / "ptb" / "ptb.train.txt").exists():
        pytest.skip("../shared/data/ptb absent")
    b = load_data("ptb", root=SHARED)
    assert b.info["tokens"] == {"train": 929_589, "val": 73_760, "test": 82_430}
    assert b.num_classes == 10_000 and "<unk>" in b.vocab and "<eos>" in b.vocab
    assert b.train[0].shape == ((929_589 - 1) // 20, 20)
    assert b.num_batches(20) == (929_589 // 20 - 1) // 20


@pytest.mark.data
def test_real_cifar10_partial_folder() -> None:
    if not (SHARED / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.skip("../shared/data/cifar-10-batches-py absent")
    if (SHARED / "cifar-10-batches-py" / "data_batch_2").exists():
        pytest.skip("the shared CIFAR-10 folder is complete here")
    with pytest.raises(DataError, match="data_batch_2"):
        load_data("cifar10", root=SHARED)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = load_data("cifar10", root=SHARED, allow_partial=True)
    assert any("data_batch_2" in str(w.message) for w in caught)
    assert b.num_train == 10_000 and b.test[0].shape == (10_000, 3, 32, 32)
    assert b.class_names is not None and len(b.class_names) == 10
    counts = torch.bincount(b.train[1], minlength=10)
    assert int(counts.sum()) == 10_000 and int(counts.min()) > 800
    x, _ = next(iter(b.train_batches(128, epoch=0, seed=0)))
    assert x.shape == (128, 3, 32, 32)
