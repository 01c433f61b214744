"""Issue 24, item 7: the thread policy a job takes, given the config, the environment and the usable cores.

The policy's speed on a shared CPU is measured by benchmarks/fair_share.py, not here.
"""
import logging

import pytest
import torch

from experiments.core.validation import load_config
from experiments.core.errors import ConfigError
from experiments.core.machine import apply_thread_policy, choose_thread_policy, thread_policy
from tests.conftest import ROOT


@pytest.mark.parametrize("cores, omp, batched, expected", [
    (2, None, True, (1, 0, "one core left free")),  # this machine, as a new user meets it
    (1, None, True, (1, 0, "one core left free")),  # never fewer than one thread
    (16, None, True, (15, 0, "one core left free")),
    (2, None, False, (1, 0, "one core left free")),  # per-image views stay in the process unless asked
    (16, None, False, (15, 0, "one core left free")),
    (2, "2", True, (2, 0, "OMP_NUM_THREADS")),  # the user's setting wins over the choice
    (2, "1", False, (1, 0, "OMP_NUM_THREADS")),
    (8, "4,2", True, (4, 0, "OMP_NUM_THREADS")),  # a nested list: its outer level
    (2, "0", True, (1, 0, "one core left free")),  # OpenMP ignores 0 and junk: so does the policy
    (2, "many", True, (1, 0, "one core left free")),
])
def test_policy_from_cores_and_omp_num_threads(cores, omp, batched, expected):
    policy = choose_thread_policy(None, None, batched, cores, omp)
    assert (policy.threads, policy.workers) == expected[:2]
    assert policy.reason.startswith(expected[2]) and policy.cores == cores


def test_the_config_overrides_the_environment_and_the_choice():
    policy = choose_thread_policy(3, 2, True, cores=2, omp_num_threads="1")
    assert (policy.threads, policy.workers) == (3, 2)
    assert policy.reason == "trainer.threads; data.num_workers"
    assert policy.short() == "3 threads, 2 loader workers"
    assert choose_thread_policy(None, 4, True, cores=16).threads == 11  # the workers' cores are left to them
    assert choose_thread_policy(None, 0, False, cores=2).short() == "1 thread"
    assert choose_thread_policy(None, 1, False, cores=16).short() == "14 threads, 1 loader worker"


def test_ddp_processes_on_the_cpu_share_the_cores():
    assert choose_thread_policy(None, None, True, cores=9, processes=2).threads == 4  # (9 - 1) // 2
    assert choose_thread_policy(None, None, True, cores=2, processes=2).threads == 1


def test_a_job_applies_the_policy_and_logs_it(monkeypatch, caplog):
    cfg = load_config(ROOT / "configs" / "digits_simsiam.yml", {"trainer.accelerator": "cpu"})
    assert (cfg.trainer.threads, cfg.data.num_workers) == (None, None)  # the defaults choose
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr("experiments.core.machine.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="ssl_nas"):
            policy = apply_thread_policy(cfg)
        assert torch.get_num_threads() == policy.threads == 2
        assert "threads: 2 threads on 2 usable cores (OMP_NUM_THREADS; views made in the training step)" \
            in caplog.text
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert thread_policy(cfg).threads == 1
        per_image = load_config(ROOT / "configs" / "digits_simsiam.yml", {"data.batched_augment": False})
        assert thread_policy(per_image).reason.endswith("per-image views in the job's process")
        ressl = thread_policy(load_config(ROOT / "configs" / "digits_ressl.yml"))  # makes its own views
        assert ressl.reason.endswith("per-image views in the job's process") and ressl.workers == 0
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("key, value", [("trainer.threads", 0), ("data.num_workers", -1)])
def test_bad_counts_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config(None, {key: value})
