"""Paper presets load as bench parameters; bad presets give clear errors."""

from __future__ import annotations

import pytest

from fedprune.errors import FedpruneError
from fedprune.presets import list_presets, load_preset

PAPER = [
    f"fedmef-{dataset}-{model}"
    for dataset in ("cifar10", "cinic10", "tinyimagenet")
    for model in ("resnet18", "mobilenetv2")
]


def test_the_six_paper_presets_are_listed():
    assert set(PAPER) <= set(list_presets())



def test_presets_ship_as_package_data():
    """Read through importlib.resources: --preset works from any install, not just a checkout."""
    from importlib import resources

    shipped = {p.name for p in resources.files("fedprune.presets").iterdir()}
    assert {f"{name}.toml" for name in PAPER} <= shipped


@pytest.mark.parametrize("name", PAPER)
def test_paper_preset_values(name):
    preset = load_preset(name)
    _, dataset, model = name.split("-")
    assert preset == {
        "methods": "fedmef,feddst,fedtiny,fedrts,prunefl,fedavg",
        "dataset": dataset,
        "model": model,
        "rounds": 500,
        "clients": 100,
        "clients_per_round": 10,
        "local_epochs": 5,
        "batch_size": 64,
        "lr": 0.01,
        "lr_schedule": "exp",
        "lr_min": 0.001,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "density": 0.1,
        "partition": "dirichlet",
        "dirichlet_alpha": 0.5,
        "eval_every": 10,
        "option": ["cosine.interval=10", "cosine.stop=300", "cosine.alpha=0.4"],
    }


def test_datasets_and_models_of_the_presets_are_registered():
    from fedprune import builtins

    datasets = {c.name for c in builtins.fedprune_datasets()}
    models = {c.name for c in builtins.fedprune_models()}
    for name in PAPER:
        preset = load_preset(name)
        assert preset["dataset"] in datasets and preset["model"] in models


def test_a_path_is_read_directly_and_option_tables_are_flattened(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'description = "ignored"\nrounds = 3\nclients-per-round = 2\nlr = 1\n'
        "[option]\ncosine.interval = 5\nsap.gamma = 0.7\nbae.enabled = true\n"
    )
    assert load_preset(str(path)) == {
        "rounds": 3,
        "clients_per_round": 2,
        "lr": 1.0,
        "option": ["cosine.interval=5", "sap.gamma=0.7", "bae.enabled=true"],
    }


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(FedpruneError) as info:
        load_preset("fedmef-mnist-lenet")
    message = str(info.value)
    assert "unknown preset 'fedmef-mnist-lenet'" in message
    assert all(name in message for name in PAPER)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rounds = 5\nround = 6\n", r"unknown key 'round'; allowed keys: methods"),
        ('rounds = "five"\n', r"rounds must be an integer, got 'five'"),
        ("density = true\n", r"density must be a number"),
        ('option = ["novalue"]\n', r"option must be a list of 'key=value' strings"),
        ("rounds = [\n", r"invalid TOML"),
    ],
)
def test_bad_preset_files_are_explained(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FedpruneError, match=match):
        load_preset(str(path))


def test_a_missing_preset_file_is_named(tmp_path):
    with pytest.raises(FedpruneError, match="preset file .*nope.toml not found"):
        load_preset(str(tmp_path / "nope.toml"))
