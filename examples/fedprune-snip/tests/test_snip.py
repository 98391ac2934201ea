import pytest
import torch
from fedprune.testing import check_method, check_pruning_criterion

from fedprune_snip import Taylor


def test_taylor_scores_weight_times_gradient():
    weight = torch.tensor([1.0, -2.0, 3.0])
    grad = torch.tensor([0.5, 0.5, -0.1])
    assert torch.allclose(Taylor().scores(weight, grad), torch.tensor([0.5, 1.0, 0.3]))


def test_taylor_falls_back_to_magnitude_without_a_gradient():
    weight = torch.tensor([1.0, -2.0])
    assert torch.equal(Taylor().scores(weight, None), weight.abs())


def test_taylor_passes_the_pruning_criterion_contract(fedprune_pm):
    check_pruning_criterion(fedprune_pm.registry.get("taylor", "pruning_criterion"))


def test_the_entry_point_registers_both_records(fedprune_pm):
    [info] = [i for i in fedprune_pm.plugin_infos() if i.name == "snip"]
    assert info.distribution == "fedprune-snip"
    assert info.registers == {"method": ["feddst_taylor"], "pruning_criterion": ["taylor"]}


@pytest.mark.parametrize("spec", ["feddst_taylor", "feddst+taylor", "prunefl+taylor"])
def test_methods_with_taylor_train(spec, tiny_federation):
    check_method(spec, tiny_federation)


def test_the_recipe_is_feddst_with_taylor_in_its_slot(tiny_federation):
    recipe, mixed = tiny_federation.run("feddst_taylor,feddst+taylor")
    assert recipe["final_accuracy"] == mixed["final_accuracy"]
    assert recipe["components"] == mixed["components"]
