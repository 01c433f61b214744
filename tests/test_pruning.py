"""DAGGER filter pruning: gates from weights only, the cost penalty by hand, surgery equal to the gated network,
NNI's pruners at a target, and a CI-sized ``prune`` on digits that saves a smaller network ``evaluate`` takes."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from experiments.pruning.dagger import DaggerModule, cost_penalty, gated, minimum_counts, select_filters
from experiments.pruning.nni_pruners import nni_keep, uniform_counts
from search_spaces.backbones import build_backbone
from search_spaces.cost import count_fixed
from experiments.pruning.filter_groups import CostModel, find_groups, prune_filters


def _randomise_norms(network: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affines (fresh ones are identity, which would hide a wrong index)."""
    g = torch.Generator().manual_seed(seed)
    for m in network.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return network.eval()


def test_gates_are_a_function_of_the_weights_only():
    torch.manual_seed(0)
    net = build_backbone("resnet18", 0.125)
    groups = find_groups(net)
    dagger = DaggerModule(net, groups)
    before = {k: v.detach().clone() for k, v in dagger(net).items()}
    net.train()  # BN statistics move with the data; the gates must not
    with gated(net, groups, lambda: dagger(net)):
        net(torch.randn(8, 3, 8, 8))
        net(torch.rand(8, 3, 8, 8) * 5)
    after = dagger(net)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():  # ... and do follow the weights
        net.layer1[0].conv1.weight[0].mul_(-3)
    changed = dagger(net)
    assert not torch.equal(changed["layer1.0.conv1"], before["layer1.0.conv1"])
    assert torch.equal(changed["layer2.0.conv1"], before["layer2.0.conv1"])  # other layers' weights unchanged


def test_cost_penalty_equals_a_hand_count_on_one_basic_block():
    toy = nn.Sequential(BasicBlock(4, 4))  # conv1 4->4 3x3, conv2 4->4 3x3, at 4x4: 4*4*9*16 = 2304 MACs each
    groups = find_groups(toy)
    assert [(g.producer, g.norm, g.consumer) for g in groups] == [("0.conv1", "0.bn1", "0.conv2")]
    cost = CostModel.build(toy, groups, input_size=4, in_channels=4)
    assert cost.full == {"flops": 4608, "params": 2 * 144 + 2 * 8}
    gates = {"0.conv1": torch.tensor([1.0, 0.5, 0.25, 0.0])}  # 1.75 channels
    penalty, ratio = cost_penalty(gates, cost, target=0.5, quantity="flops", weight=2.0)
    # gated: conv1 4 in x 1.75 out, conv2 1.75 in x 4 out, 9 taps, 16 positions
    assert float(ratio) == pytest.approx(2016 / 4608)  # 2 x 4 x 1.75 x 9 x 16 = 2016: 0.4375
    assert float(penalty) == pytest.approx(2.0 * abs(0.4375 - 0.5))  # 0.125: below the target is penalised too
    # parameters: the two convs' 4 x 1.75 x 9, bn1's 2 x 1.75, bn2's 8 (not in the group)
    _, params = cost_penalty(gates, cost, target=0.5, quantity="params")
    assert float(params) == pytest.approx((2 * 63 + 3.5 + 8) / 304)
    # the gradient reaches each gate as its channel's share of the cost, downwards above the target
    g = torch.ones(4, requires_grad=True)
    cost_penalty({"0.conv1": g}, cost, target=0.5, weight=1.0)[0].backward()
    assert torch.allclose(g.grad, torch.full((4,), 2 * 4 * 9 * 16 / 4608))  # 0.25 each


def _macro_network():
    from search_spaces.macro import MacroBackboneSpace

    space = MacroBackboneSpace(ops=("identity", "mb3_k3", "mb6_k5"), width=0.25)
    arch = {label: ("mb3_k3", "mb6_k5", "identity")[i % 3] for i, label in enumerate(space.labels)}
    return space.freeze(arch)


def _resnet_space_network():
    from search_spaces.resnet_space import ResNetSpace

    space = ResNetSpace(width=0.125)
    arch = {label: m.values[-1] if "block" not in label else ("bottleneck" if "1" in label or "3" in label else
                                                              "basic")
            for label, m in space.simplify().items()}
    return space.freeze(arch)


@pytest.mark.parametrize("make", [lambda: build_backbone("resnet18", 0.25), lambda: build_backbone("resnet50", 0.125),
                                  _macro_network, _resnet_space_network], ids=["resnet18", "resnet50", "macro",
                                                                               "resnet_space"])
def test_pruned_network_equals_the_gated_one_and_its_cost_is_exact(make):
    torch.manual_seed(1)
    net = _randomise_norms(make())
    groups = find_groups(net)
    assert groups
    cost = CostModel.build(net, groups, input_size=8)
    dagger = DaggerModule(net, groups)
    gates = {k: v.detach() for k, v in dagger(net).items()}
    keep = select_filters(gates, cost, target=0.5)
    hard = {k: torch.zeros_like(v).index_copy(0, keep[k], v[keep[k]]) for k, v in gates.items()}
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad(), gated(net, groups, lambda: hard):
        expected = net(x)
    pruned = copy.deepcopy(net)
    prune_filters(pruned, groups, keep, {k: gates[k][keep[k]] for k in keep})
    with torch.no_grad():
        got = pruned(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    counts = {k: len(v) for k, v in keep.items()}
    assert all(pruned.get_submodule(k).out_channels == n for k, n in counts.items())
    independent = count_fixed(pruned, 8)  # forward hooks on the smaller network, no cost model
    assert cost.cost(counts, "flops") == independent.flops <= 0.5 * cost.full["flops"]
    assert cost.cost(counts, "params") == independent.params



def test_a_floor_keeps_a_fraction_of_every_group_even_when_its_gates_are_lowest():
    torch.manual_seed(1)
    net = build_backbone("resnet18", 0.125)
    groups = find_groups(net)
    cost = CostModel.build(net, groups, input_size=8)
    sizes = {g.name: g.size for g in groups}
    assert minimum_counts({"a": 16, "b": 8, "c": 3}, 0.25) == {"a": 4, "b": 2, "c": 1}  # ceil, at least one
    # the first group's gates are far below every other: without a floor it empties to one channel
    gates = {name: torch.rand(n) + (0.0 if i == 0 else 10.0) for i, (name, n) in enumerate(sizes.items())}
    first = groups[0].name
    assert len(select_filters(gates, cost, 0.5)[first]) == 1
    keep = select_filters(gates, cost, 0.5, min_keep=0.25)
    assert {name: len(idx) for name, idx in keep.items()}[first] == minimum_counts(sizes, 0.25)[first]
    # the kept ones are that group's highest gates, and the target still holds
    top = torch.topk(gates[first], len(keep[first])).indices.sort().values
    assert torch.equal(keep[first], top)
    assert cost.cost({n: len(i) for n, i in keep.items()}) <= 0.5 * cost.full["flops"]
    assert all(len(keep[n]) >= minimum_counts(sizes, 0.25)[n] for n in sizes)

def test_nni_l1_pruner_keeps_the_largest_filters_within_the_target():
    torch.manual_seed(2)
    net = build_backbone("resnet18", 0.25).eval()
    groups = find_groups(net)
    cost = CostModel.build(net, groups, input_size=8)
    counts = uniform_counts(groups, cost, 0.5)
    assert cost.cost(counts) <= 0.5 * cost.full["flops"]
    assert cost.cost({k: n + 1 for k, n in counts.items()}) > 0.5 * cost.full["flops"]  # the largest uniform one
    weights = {g.name: net.get_submodule(g.producer).weight.detach().clone() for g in groups}
    keep = nni_keep(net, groups, counts, "l1")
    for g in groups:  # by hand: the counts[g] filters of largest L1 norm
        norms = weights[g.name].abs().flatten(1).sum(1)
        assert set(keep[g.name].tolist()) == set(norms.topk(counts[g.name]).indices.tolist()), g.name
        assert torch.equal(net.get_submodule(g.producer).weight, weights[g.name])  # NNI left the weights alone
    fpgm = nni_keep(net, groups, counts, "fpgm")
    assert {k: len(v) for k, v in fpgm.items()} == counts


def _save_untrained(cfg, directory, architecture: dict):
    """An untrained SimSiam network of ``cfg`` (fixed heads) saved as a retrain would save it."""
    from experiments.core.assembly import build_space
    from experiments.core.records import new_record, space_record, write_results

    torch.manual_seed(0)
    network = build_space(cfg).freeze(architecture)
    _randomise_norms(network.backbone)
    record = new_record("ssl_retrain", cfg, space_record(cfg), architecture, {}, [])
    write_results(directory, record, "base.json", network, "base.pt")
    return directory / "base.pt"


@pytest.fixture
def base_checkpoint(tiny_config, tmp_path):
    """An untrained SimSiam ResNet-18 (fixed heads) saved as a retrain would save it."""
    cfg = tiny_config(**{"model.head_space": "fixed", "evaluation.linear_epochs": 2})
    return cfg, _save_untrained(cfg, tmp_path, {})


@pytest.mark.parametrize("backbone", ["resnet18", "nas_bench_macro"])
def test_prune_job_saves_a_smaller_network_that_reloads_and_evaluates(tiny_config, tmp_path, backbone):
    from experiments.core.records import load_saved_model
    from experiments.jobs.evaluate import run_evaluate
    from experiments.jobs.prune import run_prune
    from search_spaces.nas_bench_macro import key_to_arch

    cfg = tiny_config(**{"model.head_space": "fixed", "evaluation.linear_epochs": 2, "model.backbone": backbone})
    checkpoint = _save_untrained(cfg, tmp_path, key_to_arch("22212220") if backbone == "nas_bench_macro" else {})
    out = tmp_path / "pruned"
    result = run_prune(cfg, checkpoint, out, "dagger", 0.5, "flops", finetune_epochs=1, gate_epochs=1,
                       log_fn=lambda _: None)
    pruning = result["pruning"]
    assert pruning["ratio"]["flops"] <= 0.5 and pruning["after"]["params"] < pruning["before"]["params"]
    assert len(pruning["gate_history"]) == 1
    network, payload = load_saved_model(out / "prune_model.pt", cfg)
    assert sum(p.numel() for p in network.backbone.parameters()) == pruning["after"]["params"]
    assert payload["pruned"] == {name: kept for name, (_, kept) in pruning["channels"].items()}
    assert count_fixed(network.backbone, 8).flops == pruning["after"]["flops"]  # the reloaded network is the small one
    assert json.loads((out / "prune_results.json").read_text())["kind"] == "ssl_prune"
    evaluated = run_evaluate(cfg, out / "prune_model.pt")
    assert evaluated["metrics"]["knn_top1"] == pytest.approx(result["metrics"]["knn_top1"])


@pytest.mark.parametrize("argv, message", [
    (["--flops", "1.5"], "--flops: the fraction to keep must be in (0, 1)"),
    (["--flops", "0.5", "--params", "0.5"], "exactly one target"),
    (["--flops", "0.5", "--method", "magic"], "--method"),
    (["--flops", "0.001"], "below what pruning inner filters can reach"),
    (["--flops", "0.5", "--min-keep", "1"], "--min-keep: the fraction every group keeps must be in [0, 1)"),
    (["--flops", "0.2", "--min-keep", "0.9"], "every group keeps 0.9 of its filters"),
    (["--flops", "0.5", "--missing"], "does not exist"),
    (["--flops", "0.5", "--set", "framework=simclr"], "is a simsiam network but the config is for simclr"),
])
def test_bad_prune_input_is_one_error_line_and_exit_2(base_checkpoint, tmp_path, capsys, argv, message):
    from experiments.cli import main

    cfg, checkpoint = base_checkpoint
    if "--missing" in argv:
        argv, checkpoint = argv[:-1], tmp_path / "nothing.pt"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps(cfg.to_dict()))
    out = tmp_path / "out"
    code = main(["prune", "--config", str(config), "--checkpoint", str(checkpoint), "--output-dir", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()  # refused before anything was written


def test_nni_taylor_pruner_under_the_ssl_loss_drops_dead_filters_and_leaves_the_weights(base_checkpoint):
    """A filter whose BN output is 0 gets no gradient, so its Taylor score (w * dL/dw)^2 is 0: it goes first."""
    from experiments.core.assembly import build_data, build_module
    from experiments.core.records import load_saved_model

    cfg, checkpoint = base_checkpoint
    network, _ = load_saved_model(checkpoint, cfg)
    data = build_data(cfg)
    module = build_module(cfg, 1, interleaved=False, augment=data.augment)
    module.set_model(network)
    groups = find_groups(network.backbone)
    dead = {g.name: [1, g.size - 1] for g in groups}
    with torch.no_grad():
        for g in groups:
            norm = network.backbone.get_submodule(g.norm)
            norm.weight[dead[g.name]] = 0.0
            norm.bias[dead[g.name]] = 0.0
    state = {k: v.clone() for k, v in network.state_dict().items()}
    counts = {g.name: g.size // 2 for g in groups}  # filters a ReLU never lets through tie with the dead ones at 0
    keep = nni_keep(network.backbone, groups, counts, "taylor", module, data.loader(None, cfg), taylor_steps=2)
    for g in groups:
        assert len(keep[g.name]) == g.size // 2 and not set(keep[g.name].tolist()) & set(dead[g.name]), g.name
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in state.items())  # weights and BN statistics


def test_prune_study_caches_each_run_and_records_a_collapse_without_stopping(tmp_path):
    """A killed study resumes from its JSON files; a collapsed run is a recorded result, not a crash."""
    from experiments.studies.prune import cached_run
    from experiments.core.errors import RepresentationCollapsed

    calls = []

    def collapses():
        calls.append(1)
        raise RepresentationCollapsed("the representation collapsed: collapse score 0.0000")

    path = tmp_path / "dagger-flops0.25-seed1.json"
    first = cached_run(path, collapses)
    assert first["metrics"] is None and first["collapsed"].startswith("the representation collapsed")
    assert cached_run(path, collapses) == first and len(calls) == 1  # read back, not trained again
    done = cached_run(tmp_path / "l1.json", lambda: {"metrics": {"knn_top1": 0.5, "linear_top1": 0.25}})
    assert done["metrics"] == {"knn_top1": 0.5, "linear_top1": 0.25} and done["cpu_seconds"] >= 0


@pytest.mark.parametrize("argv, message", [(["--train-images", "0"], "--train-images"),
                                           (["--backbone", "nas_bench_macro", "--nbm-key", "33"], "no key '33'")])
def test_bad_prune_study_options_are_one_error_line_and_exit_2(tmp_path, capsys, argv, message):
    from experiments.studies import run_study

    out = tmp_path / "study"
    assert run_study("prune", [*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()


def test_the_results_page_pruning_table_means_each_method_and_target_and_counts_collapses(tmp_path):
    from experiments.studies import prune as prune_study
    from experiments.studies import run_study

    def run(method, target, seed, knn):
        return {"seed": seed, "method": method, "target": target, "flops_ratio": target,
                "metrics": None if knn is None else {"knn_top1": knn, "linear_top1": 0.0}}

    a = [run("unpruned", 1, 0, 0.5), run("unpruned", 1, 1, 0.7), run("l1", 0.5, 0, 0.2), run("l1", 0.5, 1, 0.4),
         run("dagger", 0.5, 0, 0.3), run("dagger", 0.5, 1, None)]
    b = [run("unpruned", 1, 0, 0.9), run("l1", 0.75, 0, 0.8), run("l1", 0.25, 0, 0.1)]
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in prune_study.summary({"A": a, "B": b}).splitlines()}
    assert rows["method"] == ["A: 50% (2 seeds)", "B: 75% / 25% (1 seed)"]
    assert rows["unpruned"] == ["0.600", "0.900"]
    assert rows["l1"] == ["0.300", "0.800 / 0.100"]
    assert rows["dagger"] == ["0.300 (1 collapsed)", "-"]  # the collapsed seed is left out of the mean
    page = tmp_path / "results.md"
    page.write_text(f"x\n{prune_study.SUMMARY_BEGIN}\nold\n{prune_study.SUMMARY_END}\ny\n")
    assert run_study("prune", ["--page", str(page)]) == 0  # the committed studies; nothing is trained
    text = page.read_text()
    assert text.startswith("x\n") and text.endswith("\ny\n") and "old" not in text and "| dagger | 0." in text
