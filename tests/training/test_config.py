"""The run config: defaults, resolution, clear errors naming the key, --set overrides."""

from __future__ import annotations

import pytest
import yaml

from sharpest.config import (
    Config,
    ConfigError,
    apply_sets,
    load_config,
    make_config,
    parse_set,
)


def test_defaults_are_a_valid_offline_run():
    cfg = make_config()
    assert cfg.data == "mnist1d" and cfg.model == "mnist1d_cnn"
    assert cfg.track.k == 10 and cfg.track.every == 100 and cfg.track.subset == 0.05
    assert cfg.track.epoch_start is False  # every > 0
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.k == 5
    assert cfg.momentum == 0.0 and cfg.weight_decay == 0.0


@pytest.mark.parametrize(
    ("data", "model"), [("cifar10", "simplecnn"), ("CIFAR-100", "simplecnn"), ("ptb", "lstm")]
)
def test_model_follows_the_data_set(data, model):
    cfg = make_config({"data": data})
    assert cfg.model == model and cfg.data == data.lower().replace("-", "")


def test_resolution():
    cfg = make_config({"track": {"every": 0}, "optimizer": {"name": "top_only"}})
    assert cfg.track.epoch_start is True  # every == 0: the paper's epoch starts
    assert cfg.optimizer.k == 1  # the Sec. 3.3 variants use e1


def test_resolved_yaml_round_trips():
    cfg = make_config({"data": "cifar10", "lr": 0.05, "track": {"k": 3, "subset": 500}})
    text = cfg.to_yaml()
    again = make_config(yaml.safe_load(text))
    assert again == cfg
    assert again.track.subset == 500 and isinstance(again.track.subset, int)
    for key in (
        "model",
        "data",
        "data_root",
        "train_subset",
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "momentum",
        "weight_decay",
        "optimizer",
        "track",
    ):
        assert key in yaml.safe_load(text)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"trak": {"k": 5}}, "unknown key 'trak' (did you mean 'track'?)"),
        ({"track": {"kk": 5}}, "unknown key 'track.kk'"),
        ({"track": {"k": "abc"}}, "track.k"),
        ({"track": {"k": 31}}, "track.k"),
        ({"lr": -1}, "lr"),
        ({"optimizer": {"name": "adagrad"}}, "optimizer.name"),
        ({"model": "resnet9000"}, "model: unknown model"),
        ({"data": "imagenet"}, "data: unknown data set"),
        ({"optimizer": {"name": "nsgd", "k": 5}, "track": {"k": 3}}, "track.k"),
        ({"optimizer": {"gamma": 0.5}}, "optimizer.gamma"),
        ({"schedule": {"name": "plateau"}}, "val_size"),
        ({"schedule": {"name": "step"}}, "schedule.milestones"),
        ({"device": "tpu"}, "device"),
        ({"val_size": 1.5}, "val_size"),
    ],
)
def test_bad_configs_name_the_key(data, needle):
    with pytest.raises(ConfigError) as info:
        make_config(data)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and "Traceback" not in message


def test_parse_set_values_are_yaml():
    assert parse_set("lr=0.05") == ("lr", 0.05)
    assert parse_set("train_subset=null") == ("train_subset", None)
    assert parse_set("schedule.milestones=[10, 20]") == ("schedule.milestones", [10, 20])
    assert parse_set("data_root=/a=b") == ("data_root", "/a=b")
    with pytest.raises(ConfigError):
        parse_set("novalue")
    with pytest.raises(ConfigError):
        parse_set("track..k=1")


def test_apply_sets_nests_and_does_not_mutate():
    base = {"track": {"k": 3}}
    out = apply_sets(base, ["track.every=7", "optimizer.name=nsgd", "lr=1e-3"])
    assert out == {"track": {"k": 3, "every": 7}, "optimizer": {"name": "nsgd"}, "lr": 1e-3}
    assert base == {"track": {"k": 3}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_sets({"lr": 0.1}, ["lr.x=1"])


def test_load_config_file_and_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nepochs: 3\ntrack:\n  k: 4\n")
    cfg = load_config(path, ["track.every=9", "seed=5"])
    assert (cfg.model, cfg.epochs, cfg.track.k, cfg.track.every, cfg.seed) == ("mlp", 3, 4, 9, 5)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_keyword_overrides():
    cfg = make_config({"lr": 0.1}, track__k=2, epochs=1)
    assert isinstance(cfg, Config) and cfg.track.k == 2 and cfg.epochs == 1 and cfg.lr == 0.1
