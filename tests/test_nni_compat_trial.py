"""Pins quirks 7-9 of experiments/nni_compat.py: a one-shot search inside an nnictl trial.

A recording channel stands in for the NNI manager's side of the trial command channel, so
the test sees exactly which metrics would reach the dashboard and under which parameter id.
"""
from __future__ import annotations

import pytest

import nni
import nni.runtime.trial_command_channel as channels
from nni.runtime.trial_command_channel import TrialCommandChannel, get_default_trial_command_channel

from experiments import nni_compat

OUR_PARAMETER_ID = 7


class RecordingChannel(TrialCommandChannel):
    """What the NNI manager would receive from this trial."""

    def __init__(self):
        self.sent = []

    def receive_parameter(self):
        return {"parameter_id": OUR_PARAMETER_ID, "parameter_source": "algorithm",
                "parameters": {"search.arch_lr": 0.002}, "parameter_index": 0}

    def send_metric(self, type, parameter_id, trial_job_id, sequence, value):  # noqa: A002 - NNI's signature
        self.sent.append({"type": type, "parameter_id": parameter_id, "sequence": sequence, "value": value})


@pytest.fixture
def recording_trial():
    """NNI's trial globals pointed at a recording channel, put back afterwards."""
    saved = channels._channel, nni.trial._params, nni.trial._intermediate_seq
    recorder = RecordingChannel()
    channels.set_default_trial_command_channel(recorder)
    try:
        yield recorder
    finally:
        channels._channel, nni.trial._params, nni.trial._intermediate_seq = saved


def test_quirk7_8_search_inside_trial_reports_through_the_trials_own_channel(recording_trial, tiny_config, tmp_path):
    from experiments.jobs.search import run_search
    from experiments.jobs.trial import TrialChannel, intermediate_metric

    assert nni.get_next_parameter() == {"search.arch_lr": 0.002}
    ours = TrialChannel()
    naive_seen = []

    def naive(record):  # what a trial would do without the work-around
        naive_seen.append(get_default_trial_command_channel())
        nni.report_intermediate_result(record["knn_top1"])

    cfg = tiny_config(**{"search.epochs": 1, "data.train_subset": 256, "data.test_subset": 100,
                         "evaluation.linear_epochs": 5, "evaluation.knn_k": 10,
                         "search.collapse_threshold": 0.0})
    with nni_compat.unregistered_nested_experiments():
        record = run_search(cfg, tmp_path / "s",
                            listeners=[naive, lambda r: ours.report_intermediate(intermediate_metric(r))],
                            log_fn=lambda _: None)

    # Quirk 7: during the search NNI's global channel was the sequential engine's, so the naive
    # report went there; only our channel's report reached the manager.
    assert naive_seen and naive_seen[0] is not recording_trial
    periodical = [m for m in recording_trial.sent if m["type"] == "PERIODICAL"]
    assert len(periodical) == 1
    assert periodical[0]["parameter_id"] == OUR_PARAMETER_ID and periodical[0]["sequence"] == 0
    # what reached the manager is the search's own epoch-1 record: its kNN, loss and collapse score
    epoch1 = record["history"][0]
    assert periodical[0]["value"] == intermediate_metric(epoch1) and periodical[0]["value"]["epoch"] == 1
    assert periodical[0]["value"]["default"] == epoch1["knn_top1"] and "ssl_loss" in periodical[0]["value"]
    # Quirk 8: the engine left its own parameter record behind (id 0, the model as parameters).
    assert nni.trial._params["parameter_id"] == 0
    assert nni.trial._params["parameter_id"] != OUR_PARAMETER_ID

    ours.report_final({"default": 0.5})
    ours.restore()
    assert nni.trial._params["parameter_id"] == OUR_PARAMETER_ID
    assert get_default_trial_command_channel() is recording_trial
    nni.report_final_result({"default": 0.5})  # after restore() the plain API is right again
    finals = [m for m in recording_trial.sent if m["type"] == "FINAL"]
    assert [m["parameter_id"] for m in finals] == [OUR_PARAMETER_ID, OUR_PARAMETER_ID]


def test_quirk9_nested_experiments_stay_out_of_nnictls_experiment_list(monkeypatch):
    import nni.nas.experiment.experiment as nas_experiment
    from nni.nas.experiment import NasExperiment

    added = []

    class Manifest:  # stands in for ~/nni-experiments/.experiment
        def add_experiment(self, exp_id, *args, **kwargs):
            added.append(exp_id)

        def update_experiment(self, exp_id, key, value):
            added.append((exp_id, key))

    class Fake:
        id = "nested01"

        class config:
            experiment_name = None
            experiment_working_directory = "/tmp/nowhere"

    monkeypatch.setattr(nas_experiment, "Experiments", Manifest)
    NasExperiment._start_without_nni_manager(Fake())  # quirk 9: NNI registers it
    assert added == ["nested01"]
    added.clear()
    with nni_compat.unregistered_nested_experiments():
        NasExperiment._start_without_nni_manager(Fake())
        NasExperiment._stop_without_nni_manager(Fake())
    assert added == []
    NasExperiment._stop_without_nni_manager(Fake())  # and the class is restored afterwards
    assert added == [("nested01", "status"), ("nested01", "endTime")]


def test_quirk11_a_failed_experiment_file_does_not_break_the_next_load(tmp_path):
    from nni.experiment.config import ExperimentConfig
    from nni.experiment.config.utils import internal

    good = tmp_path / "good.yml"
    good.write_text("searchSpace: {x: {_type: choice, _value: [1]}}\ntrialCommand: 'true'\ntrialConcurrency: 1\n"
                    "tuner: {name: Random}\ntrainingService: {platform: local}\n")
    bad = tmp_path / "bad.yml"
    bad.write_text(good.read_text() + "trialConcurency: 2\n")
    with pytest.raises(AttributeError):
        ExperimentConfig.load(str(bad))
    try:  # quirk 11: NNI's global base path is still set, the next load fails on an assertion
        with pytest.raises(AssertionError):
            ExperimentConfig.load(str(good))
    finally:
        internal.unset_base_path()
    with pytest.raises(AttributeError):
        nni_compat.load_experiment_config(bad)
    assert nni_compat.load_experiment_config(good).trial_concurrency == 1
