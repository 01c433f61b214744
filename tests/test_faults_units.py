"""The pieces of fault tolerance, one by one (no training): atomic saves, RNG state, the
output directory's lock and record, the seeded sampler, the failure guard, NNI quirks 7 and 8."""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bench_digits_simsiam.yml"
TINY = {"model.backbone_width": 0.0625, "model.head_width": 0.0625}


@pytest.fixture
def cfg():
    from experiments.core.validation import load_config

    return load_config(CONFIG, TINY)


# --- atomic files and RNG ------------------------------------------------------------------------
def test_atomic_save_keeps_the_last_good_file(tmp_path):
    from experiments.core.files import atomic_torch_save
    from experiments.core.checkpointing import load_checkpoint

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"epoch": 2, "bad": lambda: None}, path)  # cannot be pickled: fails mid-save
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_atomic_files_get_the_mode_a_plain_open_would_give(tmp_path):
    """mkstemp's temporary files are private (0600); a result renamed from one must not stay so."""
    import stat

    from experiments.core.files import atomic_torch_save, write_json_atomic, write_text_atomic

    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_text_atomic(tmp_path / "a.md", "# x\n")
    atomic_torch_save({"x": torch.ones(1)}, tmp_path / "m.pt")
    (tmp_path / "plain").write_text("x")
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    for name in ("a.json", "a.md", "m.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from experiments.core.checkpointing import capture_rng, restore_rng

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    path = tmp_path / "rng.pt"
    torch.save(capture_rng(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_bad_checkpoint_is_one_line(tmp_path):
    from experiments.core.checkpointing import CheckpointError, load_checkpoint

    path = tmp_path / "x.ckpt"
    torch.save({"obj": SimpleNamespace(a=1)}, path)  # a pickled object: refused by weights_only
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "cannot load checkpoint" in str(info.value)


# --- the output directory ------------------------------------------------------------------------
def test_a_second_claim_on_the_same_directory_is_refused(tmp_path, cfg):
    from experiments.core.run_dir import open_run
    from experiments.core.errors import ConfigError

    out = tmp_path / "out"
    with open_run(out, cfg, "search", (), log_fn=lambda line: None):
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with open_run(out, cfg, "search", (), log_fn=lambda line: None):
                pass
        assert json.loads((out / "status.json").read_text())["state"] == "running"
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    with open_run(out, cfg, "search", (), log_fn=lambda line: None):  # released: the same run may go on
        pass


def test_claim_records_failures_and_cleans_stale_temporaries(tmp_path, cfg):
    from experiments.core.run_dir import open_run
    from experiments.core.errors import NonFiniteLoss

    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    stale = out / "checkpoints" / ".last.ckpt.abc.tmp"  # left by a writer that was SIGKILLed
    stale.write_bytes(b"half")
    with pytest.raises(NonFiniteLoss):
        with open_run(out, cfg, "search", (), log_fn=lambda line: None):
            raise NonFiniteLoss("train/ssl_loss is nan at epoch 1, batch 2")
    assert not stale.exists()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"].startswith("train/ssl_loss is nan")


def test_overwrite_starts_over(tmp_path, cfg):
    from experiments.core.run_dir import open_run
    from experiments.core.errors import ConfigError
    from experiments.core.validation import load_config

    out = tmp_path / "out"
    with open_run(out, cfg, "search", (), log_fn=lambda line: None):
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "last.ckpt").write_bytes(b"old")
    (out / "best_architecture.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # not a file of the job: left alone
    other = load_config(CONFIG, {**TINY, "search.epochs": 7})
    with pytest.raises(ConfigError, match="this run is finished"):
        with open_run(out, other, "search", ("best_architecture.json",), log_fn=lambda line: None):
            pass
    with open_run(out, other, "search", ("best_architecture.json",), overwrite=True, log_fn=lambda line: None):
        assert not (out / "checkpoints").exists() and not (out / "best_architecture.json").exists()
    assert json.loads((out / "run.json").read_text())["config"]["search"]["epochs"] == 7
    assert (out / "notes.txt").read_text() == "mine"


def test_volatile_fields_do_not_change_the_run(cfg):
    from experiments.core.run_dir import run_record
    from experiments.core.validation import load_config

    same = load_config(CONFIG, {**TINY, "trainer.progress_bar": False, "data.num_workers": 2, "output_dir": "x"})
    other = load_config(CONFIG, {**TINY, "search.arch_lr": 0.01})
    assert run_record(cfg, "search")["fingerprint"] == run_record(same, "search")["fingerprint"]
    assert run_record(cfg, "search")["fingerprint"] != run_record(other, "search")["fingerprint"]


# --- data order ----------------------------------------------------------------------------------
def test_seeded_sampler_is_a_function_of_seed_stream_epoch():
    from experiments.core.data import SeededSampler

    def order(seed=0, stream=0, epoch=0, resume=None):
        s = SeededSampler(20, seed, stream)
        s.set_epoch(epoch)
        if resume is not None:
            s.resume_at(epoch, resume)
        return list(s)

    assert order() == order() and order() != order(epoch=1) != order(stream=1)
    assert order(epoch=2, resume=6) == order(epoch=2)[6:]
    assert sorted(i for i, _ in order()) == list(range(20))


def test_views_come_from_the_sample_seed_not_the_global_rng():
    from evaluators.views import AugmentSettings, ssl_view
    from experiments.core.data import MultiViewDataset

    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    view = ssl_view(AugmentSettings(crop_min_scale=0.3), 8, [0.5] * 3, [0.25] * 3)
    ds = MultiViewDataset(images, [view, view])
    torch.manual_seed(1)
    a = ds[(2, 1234)]
    torch.manual_seed(2)
    b = ds[(2, 1234)]
    after = torch.rand(1)
    torch.manual_seed(2)
    torch.rand(1)  # the dataset did not consume the global generator
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])
    torch.manual_seed(2)
    assert torch.equal(torch.rand(1), after)



def test_seeded_items_of_a_labelled_dataset_end_with_their_label():
    """The supervised objective reads the label as the last item of every seeded batch."""
    from experiments.core.data import MultiViewDataset

    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    labels = torch.tensor([7, 8, 9, 3])
    ds = MultiViewDataset(images, [lambda x: x.float()], labels)
    views_and_label = ds[(2, 99)]
    assert len(views_and_label) == 2 and int(views_and_label[-1]) == 9
    assert torch.equal(views_and_label[0], images[2].float())
    assert len(MultiViewDataset(images, [lambda x: x.float()])[(2, 99)]) == 1

# --- the failure guard ---------------------------------------------------------------------------
def _guard(scores, threshold=0.05, patience=2):
    from experiments.core.guards import FailureGuard

    cfg = SimpleNamespace(search=SimpleNamespace(collapse_threshold=threshold),
                          evaluation=SimpleNamespace(collapse_patience=patience))
    monitor = SimpleNamespace(history=[{"epoch": i + 1, "collapse": s} for i, s in enumerate(scores)])
    trainer = SimpleNamespace(current_epoch=len(scores) - 1, callback_metrics={})
    return FailureGuard(monitor, cfg, "search"), trainer


@pytest.mark.parametrize("scores, stops", [
    ([0.01, 0.5, 0.01], False),  # a network starts low and spreads out: one low epoch is not a collapse
    ([0.5, 0.01, 0.02], True),
    ([0.5, 0.01, math.nan], True),
    ([0.01], False),
])
def test_collapse_needs_patience_epochs_below_the_threshold(scores, stops):
    from experiments.core.errors import RepresentationCollapsed

    guard, trainer = _guard(scores)
    if stops:
        with pytest.raises(RepresentationCollapsed, match="search.collapse_threshold 0.05"):
            guard.on_train_epoch_end(trainer, None)
    else:
        guard.on_train_epoch_end(trainer, None)
    off, trainer = _guard(scores, threshold=0.0)
    off.on_train_epoch_end(trainer, None)  # 0 turns the check off


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_stop_the_run(value):
    from experiments.core.errors import NonFiniteLoss

    guard, trainer = _guard([1.0])
    guard.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 0)
    trainer.callback_metrics["search/arch_loss"] = torch.tensor(value)
    with pytest.raises(NonFiniteLoss, match=r"search/arch_loss is .* at epoch 1, batch 4"):
        guard.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 3)
    trainer.callback_metrics.clear()
    with pytest.raises(NonFiniteLoss, match=r"train/ssl_loss"):
        guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(value)}, None, 0)


# --- NNI quirks 4, 7 and 8 -----------------------------------------------------------------------
@pytest.fixture
def darts(cfg):
    from nni.nas.strategy import DARTS

    from experiments.core.assembly import build_module, build_space

    strategy = DARTS()
    supernet = strategy.mutate_model(build_space(cfg))
    return strategy, supernet, build_module(cfg, 2, interleaved=True)


def test_quirk21_oneshot_wrapper_does_not_forward_checkpoint_hooks(darts):
    from experiments.nni_compat import forward_checkpoint_hook

    strategy, supernet, module = darts
    wrapper = strategy.configure_oneshot_module(module)
    module.weight_steps = 5
    checkpoint: dict = {}
    wrapper.on_save_checkpoint(checkpoint)
    assert "weight_steps" not in checkpoint  # the quirk: NNI's wrapper keeps the hook to itself
    forward_checkpoint_hook(wrapper, "on_save_checkpoint", checkpoint)
    assert checkpoint["weight_steps"] == 5
    module.weight_steps = 0
    forward_checkpoint_hook(wrapper, "on_load_checkpoint", checkpoint)
    assert module.weight_steps == 5
    forward_checkpoint_hook(module, "on_save_checkpoint", {})  # a plain module: Lightning calls it, we do not


def test_quirk22_darts_arch_optimizer_order_is_made_stable(darts):
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule

    from experiments.strategies.darts import DartsStrategy

    assert "set(" in inspect.getsource(DartsLightningModule.arch_parameters)  # the quirk: a set's order
    _, supernet, module = darts
    wrapper = DartsStrategy(hooks={}).configure_oneshot_module(module)
    wrapper.set_model(supernet)
    alphas = wrapper.arch_parameters()
    in_order = [p for p in wrapper.parameters() if any(p is a for a in alphas)]
    assert len(alphas) > 1 and all(a is b for a, b in zip(alphas, in_order))
    optimizer = wrapper.configure_architecture_optimizers()
    assert all(a is b for a, b in zip(optimizer.param_groups[0]["params"], in_order))


def test_quirk4_probabilities_have_plain_string_keys(darts, tmp_path):
    from search_spaces.supernet import architecture_probabilities

    _, supernet, _ = darts
    probs = architecture_probabilities(supernet)
    assert probs and all(type(k) is str for k in probs)  # NNI's label objects would not load safely
    torch.save({"history": [{"architecture": probs}]}, tmp_path / "h.pt")
    assert torch.load(tmp_path / "h.pt", weights_only=True)["history"][0]["architecture"] == probs


def test_quirk23_replaying_the_epoch_start_sets_the_gumbel_temperature(cfg):
    from nni.nas.oneshot.pytorch.supermodule.differentiable import GumbelSoftmax
    from nni.nas.strategy import GumbelDARTS

    from experiments.core.assembly import build_module, build_space
    from experiments.nni_compat import replay_epoch_start

    strategy = GumbelDARTS(temperature=(1.0, 0.2))
    supernet = strategy.mutate_model(build_space(cfg))
    wrapper = strategy.configure_oneshot_module(build_module(cfg, 4, interleaved=True))
    wrapper.set_model(supernet)
    wrapper.log = lambda *args, **kwargs: None  # no trainer attached to log to here
    wrapper._trainer = SimpleNamespace(current_epoch=2, max_epochs=4)
    taus = lambda: {round(m.tau, 4) for m in wrapper.modules() if isinstance(m, GumbelSoftmax)}  # noqa: E731
    assert taus() == {1.0}  # what a mid-epoch resume would train with: Lightning skips the epoch-start hook
    replay_epoch_start(wrapper)
    assert taus() == {round(1.0 - (1.0 - 0.2) * 2 / 4, 4)}  # linear from 1.0 at epoch 0 towards 0.2


# --- the NNI manager going away is no disk's fault ------------------------------------------------
def test_only_file_errors_are_reported_as_the_output_directory_failing():
    import errno

    import requests

    from experiments.core.errors import is_filesystem_error

    assert is_filesystem_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_filesystem_error(PermissionError(errno.EACCES, "Permission denied", "/x/last.ckpt"))
    # nnictl stop closes the trial's channel: requests' ConnectionError is an OSError without errno or file
    assert not is_filesystem_error(requests.exceptions.ConnectionError("Connection refused"))
    assert not is_filesystem_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))


def test_a_closed_manager_channel_costs_an_epoch_metric_not_the_run(tmp_path, cfg):
    """What ``nnictl stop`` did to a running trial before its SIGINT arrived: the epoch's report raised
    ConnectionError, which failed the run as "connectionerror under <dir>"."""
    import requests

    from experiments.core.run_dir import claim_output_dir, claims_output_dir
    from experiments.jobs.trial import Trial

    class Closed:
        parameter_id = 0

        def report_intermediate(self, metric):
            raise requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")

    said = []
    trial = Trial({}, Closed(), log_fn=said.append)
    trial.report_epoch({"epoch": 3, "knn_top1": 0.5})
    assert said == ["warning: the NNI manager did not take epoch 3's result (ConnectionError: ('Connection "
                    "aborted.', RemoteDisconnected())); the run goes on"]

    @claims_output_dir
    def job(out):  # any other socket error inside a run is a crash with its own name, not a full disk
        claim_output_dir(out, cfg, "search", ("best_architecture.json",), log_fn=lambda line: None)
        raise requests.exceptions.ConnectionError("gone")

    with pytest.raises(requests.exceptions.ConnectionError):
        job(tmp_path / "run")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "ConnectionError: gone"
