"""The width ranking script: ground-truth file names (the supervised ones unchanged), the tau table on hand-made
numbers, and the Channel-Bench-Macro reader on a tiny hand-made file in its format (never its data)."""
from __future__ import annotations

import json
import math

import pytest

from experiments.studies import width_ranking as wr
from experiments.studies import run_study
from experiments.studies.kit import kendall

WIDTHS = wr.all_widths()


def test_file_names_keep_the_supervised_runs_and_name_other_objectives():
    small = {"backbone.layer1.width": 12, "backbone.layer2.width": 12, "backbone.layer3.width": 24}
    assert wr.truth_file(small, 0, 4).name == "12-12-24__seed0__e4.json"  # committed before objectives had names
    assert wr.truth_file(small, 0, 4, "supervised") == wr.truth_file(small, 0, 4)
    assert wr.truth_file(small, 1, 20, "simsiam").name == "12-12-24__simsiam__seed1__e20.json"


def test_the_committed_supervised_runs_still_read_as_the_supervised_ground_truth(tmp_path):
    runs = wr.ground_truth_runs(WIDTHS[:3], "supervised", [0, 1], 4, True, tmp_path, print)
    truth = wr.own_truth("supervised", runs)
    for seed, row in zip([0, 1], truth.per_seed):
        assert row == [json.loads(wr.truth_file(w, seed, 4).read_text())["test_top1"] for w in WIDTHS[:3]]
    assert truth.networks == [0, 1, 2] and truth.objective == "supervised"
    # --table-only never trains: a seed with no cached run reaches no network, and no truth stands on it
    assert wr.ground_truth_runs(WIDTHS[:3], "simsiam", [99], 20, True, tmp_path, print) == {99: {}}
    assert wr.own_truth("simsiam", {99: {}}) is None and list(tmp_path.iterdir()) == []


def test_the_table_on_hand_made_numbers():
    # truth seeds [1, 2, 3, 4] and [1, 2, 4, 3]: mean [1, 2, 3.5, 3.5]; tau-b of [1, 2, 3, 4] against it: 5 concordant
    # pairs, one tie in the truth: 5 / sqrt(6 * 5)
    truth = wr.Truth("hand", "simsiam", [0, 1, 2, 3], [[1, 2, 3, 4], [1, 2, 4, 3]], [10, 20, 30, 40], [4, 3, 2, 1])
    runs = [{"strategy": "autoslim", "objective": "simsiam", "seed": s, "scores": [1, 2, 3, 4]} for s in (0, 1)]
    runs += [{"strategy": "bcnet", "objective": "simsiam", "seed": 0, "scores": [4, 3, 2, 1]},
             {"strategy": "cafenet", "objective": "supervised", "seed": 0, "scores": [1, 2, 3, 4]}]  # another objective
    tau = 5 / math.sqrt(30)
    lines = wr.table(truth, runs, rounds=50).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines if line.startswith("| ")}
    assert rows["autoslim supernet (simsiam)"][:2] == [f"{tau:.3f}, {tau:.3f}", f"{tau:.3f} (0.000)"]
    assert rows["autoslim supernet (simsiam)"][3] == "-"
    # budget: the median FLOPs (25) keeps networks 0 and 1; the truth ranks 1 first
    assert rows["autoslim supernet (simsiam)"][4] == "2.000 (1), 2.000 (1) |"
    assert rows["bcnet supernet (simsiam)"][1] == f"{-tau:.3f} (0.000)"
    assert rows["bcnet supernet (simsiam)"][3].startswith(f"{-2 * tau:+.3f} [")
    assert rows["bcnet supernet (simsiam)"][4] == "1.000 (2) |"
    assert not any(key.startswith("cafenet") for key in rows)
    assert rows["FLOPs (label-free)"][1] == f"{tau:.3f}" and rows["parameters (label-free)"][1] == f"{-tau:.3f}"
    assert rows["noise ceiling: one seed against the other"][1] == f"{4 / 6:.3f}"  # 5 concordant, 1 discordant



def test_the_results_page_summary_puts_each_objectives_supernets_against_its_own_truth(tmp_path):
    # as above: tau-b of [1, 2, 3, 4] against the truth's mean [1, 2, 3.5, 3.5] is 5 / sqrt(30)
    tau = 5 / math.sqrt(30)
    hand = wr.Truth("hand", "simsiam", [0, 1, 2, 3], [[1, 2, 3, 4], [1, 2, 4, 3]], [10, 20, 30, 40], [4, 3, 2, 1])
    other = wr.Truth("other", "supervised", [0, 1, 2, 3], [[4, 3, 2, 1]], [10, 20, 30, 40], [4, 3, 2, 1])
    runs = [{"strategy": "autoslim", "objective": "simsiam", "seed": 0, "scores": [1, 2, 3, 4]},
            {"strategy": "autoslim", "objective": "simsiam", "seed": 1, "scores": [4, 3, 2, 1]},
            {"strategy": "autoslim", "objective": "supervised", "seed": 0, "scores": [1, 2, 3, 4]}]
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip(" |") for c in line.split(" | ")[1:]]
            for line in wr.summary([hand, other, None], runs, rounds=20).splitlines()}
    assert list(rows)[0] == "ranker" and rows["ranker"] == ["simsiam (2 truth seeds)", "supervised (1 truth seeds)"]
    assert rows["autoslim supernet"][0] == f"+0.000 (+{tau:.2f} / -{tau:.2f})"
    assert rows["autoslim supernet"][1] == "-1.000 (-1.00)"  # against the supervised truth only
    assert rows["FLOPs (label-free)"][0].startswith(f"+{tau:.3f} [")
    assert rows["parameters (label-free)"][1].startswith("+1.000 [")
    assert rows["noise ceiling"] == [f"+{4 / 6:.3f} [" + rows["noise ceiling"][0].split("[")[1], "-"]
    page = tmp_path / "results.md"
    page.write_text("# r\n\n" + wr.SUMMARY_BEGIN + "\nold\n" + wr.SUMMARY_END + "\n\n## More\n")
    assert run_study("width-ranking", ["--table-only", "--seeds", "0", "--objectives", "supervised", "--bootstrap", "5",
                    "--page", str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and text.endswith("\n\n## More\n") and "| autoslim supernet | +" in text


def channel_bench_file(path, accuracy=lambda i, seed: 0.5 + 0.004 * i + 0.001 * seed, skip=None, extra=True):
    """A hand-made table in Channel-Bench-Macro's format: our 64 networks' keys (and some others), made-up numbers."""
    table = {}
    for i, w in enumerate(WIDTHS):
        key = wr.channel_bench_key(w)
        if key != skip:
            acc = [accuracy(i, s) for s in range(3)]
            table[key] = {"acc": acc, "mean": acc[0], "std": 0.0, "params": 1000 + i, "flops": 5000 - i}
    if extra:
        table["1111111"] = {"acc": [0.1, 0.1, 0.1], "mean": 0.1, "std": 0.0, "params": 1, "flops": 1}
    path.write_text(json.dumps(table))
    return path


def test_the_channel_bench_keys_put_our_width_index_at_its_three_hidden_positions():
    def arch(a, b, c):
        return {"backbone.layer1.width": a, "backbone.layer2.width": b, "backbone.layer3.width": c}

    assert wr.channel_bench_key(arch(6, 12, 24)) == "4411414"
    assert wr.channel_bench_key(arch(24, 48, 96)) == "4444444"
    assert wr.channel_bench_key(arch(6, 24, 72)) == "4412434"
    assert len({wr.channel_bench_key(w) for w in WIDTHS}) == 64


def test_the_reader_takes_the_64_networks_and_their_seeds(tmp_path):
    truth = wr.read_channel_bench(channel_bench_file(tmp_path / "Results_MobileNet.json"), WIDTHS)
    assert truth.networks == list(range(64)) and len(truth.per_seed) == 3
    assert truth.per_seed[2][5] == pytest.approx(0.5 + 0.004 * 5 + 0.002)
    assert truth.flops[:2] == [5000, 4999] and truth.params[63] == 1063 and truth.objective is None


def test_the_script_ranks_the_cached_supernets_against_the_table(tmp_path, capsys):
    path = channel_bench_file(tmp_path / "cbm.json", accuracy=lambda i, seed: 0.9 - 0.001 * i)
    assert run_study("width-ranking", ["--table-only", "--objectives", "supervised", "--seeds", "0", "--bootstrap", "20",
                    "--channel-bench", str(path)]) == 0
    out = capsys.readouterr().out
    cbm = out.split("Against the Channel-Bench-Macro table cbm.json")[1]
    flops_row = next(line for line in cbm.splitlines() if line.startswith("| FLOPs"))
    # the made-up accuracy falls with the index as the made-up FLOPs do: FLOPs rank it perfectly
    assert flops_row.split(" | ")[2] == "1.000"
    scores = json.loads((wr.RANK_DIR / "autoslim__supervised__seed0__e20.json").read_text())["scores"]
    autoslim_row = next(line for line in cbm.splitlines() if line.startswith("| autoslim supernet (supervised)"))
    assert autoslim_row.split(" | ")[1] == f"{kendall(scores, [0.9 - 0.001 * i for i in range(64)]):.3f}"


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it as JSON"),
    ("{not json", "cannot read it as JSON"),
    ("[1, 2]", "not Channel-Bench-Macro's table"),
    ("skip", "no network '4411414'"),
    ("text", "lacks numeric acc"),
])
def test_a_bad_table_is_one_error_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "table.json"
    if content == "skip":
        channel_bench_file(path, skip="4411414")
    elif content == "text":
        channel_bench_file(path, accuracy=lambda i, seed: "high")
    elif content is not None:
        path.write_text(content)
    before = sorted(tmp_path.iterdir())
    assert run_study("width-ranking", ["--table-only", "--channel-bench", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --channel-bench") and message in err[0]
    assert sorted(tmp_path.iterdir()) == before


def test_two_truths_agree_on_the_networks_they_share():
    a = wr.Truth("A", "simsiam", [0, 1, 2, 3], [[1, 2, 3, 4], [1, 2, 3, 6]], [0] * 4, [0] * 4)
    b = wr.Truth("B", None, [1, 2, 3, 5], [[3, 2, 1, 9]], [0] * 4, [0] * 4)
    cells = wr.agreement(a, b, rounds=20).split(" | ")
    assert cells[0] == "| A" and cells[2] == "-1.000" and cells[4] == "3 |"  # networks 1, 2, 3: [2, 3, 4.5] vs [3, 2, 1]
