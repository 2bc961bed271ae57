"""The large-batch study (benchmarks/large_batch.py): its learning-rate rules, its choice of rates and one real run.

The full study (1- and 2-rank jobs) runs from the command line; here its pieces run in
process, and one tiny run trains for real. That two ranks train what one process does is
tests/test_distributed.py's to check.
"""

from __future__ import annotations

import argparse
import math

import pytest

from benchmarks import large_batch as lb


def test_each_rule_scales_its_rate_with_the_global_batch():
    assert lb.RULES["sgd"].lr(0.1, 1024) == 0.1
    assert lb.RULES["adam"].lr(0.01, 1024) == pytest.approx(0.04)
    assert lb.RULES["lars"].lr(2.0, 128) == pytest.approx(1.0)
    assert lb.RULES["lamb"].lr(0.01, 1024) == pytest.approx(0.02)
    assert lb.RULES["lamb"].lr(0.01, 64) == pytest.approx(0.005)


def test_warm_up_starts_at_the_base_rate_when_scaling_raised_it_else_at_a_tenth():
    up = lb.schedule_for(lb.RULES["adam"], 0.01, 1024)  # peak 0.04
    assert [up(t) for t in (0.0, 1.0, 2.0, 5.0)] == pytest.approx([0.01, 0.025, 0.04, 0.04])
    down = lb.schedule_for(lb.RULES["lars"], 1.0, 32)  # peak 0.125, below the base
    assert [down(t) for t in (0.0, 2.0)] == pytest.approx([0.0125, 0.125])
    constant = lb.schedule_for(lb.RULES["sgd"], 0.1, 1024)
    assert [constant(t) for t in (0.0, 3.0)] == [0.1, 0.1]


def test_the_chosen_rate_has_the_best_mean_validation_accuracy_and_a_diverged_run_counts_as_zero():
    rows = [
        {"rule": "lamb", "base_lr": 0.01, "val_accuracy": 0.90},
        {"rule": "lamb", "base_lr": 0.01, "val_accuracy": 0.92},
        {"rule": "lamb", "base_lr": 0.1, "val_accuracy": 0.99},
        {"rule": "lamb", "base_lr": 0.1, "val_accuracy": 0.0},  # diverged
        {"rule": "sgd", "base_lr": 0.3, "val_accuracy": 0.8},
        {"rule": "sgd", "base_lr": 0.1, "val_accuracy": 0.8},
    ]
    assert lb.choose(rows) == {"lamb": 0.01, "sgd": 0.1}


def test_one_run_trains_and_repeats_itself():
    splits = lb.load_splits()
    assert {part: len(y) for part, (_, y) in splits.items()} == {"train": 1295, "val": 143, "test": 359}
    run = {"rule": "lamb", "base_lr": 0.03, "batch": 256, "seed": 1}
    settings = {"epochs": 3, "dtype": "float32"}
    first = lb.train_one(splits, run, settings, None)
    assert not first["diverged"] and 0.5 < first["val_accuracy"] <= 1.0 and 0.5 < first["test_accuracy"] <= 1.0
    assert math.isfinite(first["loss"])
    assert lb.train_one(splits, run, settings, None) == first


def test_a_run_that_diverges_is_reported_not_raised():
    splits = lb.load_splits()
    run = {"rule": "sgd", "base_lr": 1e6, "batch": 64, "seed": 0}
    result = lb.train_one(splits, run, {"epochs": 2, "dtype": "float32"}, None)
    assert result["diverged"] and math.isnan(result["loss"]) and result["val_accuracy"] == 0.0


def test_the_tables_pair_each_rank_count_and_show_the_difference():
    rows = [
        {"rule": name, "base_lr": base, "batch": batch, "seed": 0, "diverged": False, "val_accuracy": 0.9,
         "test_accuracy": 0.95, "loss": 0.1}
        for name, rule in lb.RULES.items()
        for base in rule.grid
        for batch in (64, 256)
    ]  # fmt: skip
    chosen = {name: rule.grid[0] for name, rule in lb.RULES.items()}
    record = {
        "batches": [64, 256],
        "seeds": 1,
        "epochs": 2,
        "dtype": "float32",
        "rows": {"train": 1295},
        "chosen": chosen,
        "one_rank": rows,
        "two_ranks": [row for row in rows if chosen[row["rule"]] == row["base_lr"]],
        "max_diff_accuracy": 0.0,
        "max_diff_loss": 1.5e-7,
    }
    text = lb.render(record)
    assert "| SGD, momentum 0.9, one rate | 0.01 | 1 | 95.0 | 95.0 |" in text
    assert "|  |  | 2 | 95.0 | 95.0 |" in text
    assert "| (steps per epoch) |  |  | 21 | 6 |" in text
    assert "0.00 points of test accuracy, 1.5e-07" in text
    assert "| 0.01 (chosen) | 90.0 | 90.0 | 90.0 |" in text


@pytest.mark.parametrize("text", ["", "32,abc", "33", "0"])
def test_batches_must_be_even_so_two_ranks_split_them(text):
    with pytest.raises(argparse.ArgumentTypeError, match="even batch sizes"):
        lb._batches(text)
