"""The dense-task benchmarks: rows with curves, rates chosen on validation, resumption, the report."""

import json

import pytest
from harness.report import markdown
from harness.runner import BenchmarkConfig, Job, choose_learning_rates, pending_jobs, run_benchmark, write_results

SEGMENTATION = "semantic-segmentation"


def test_quick_benchmark_records_curves_chooses_on_validation_resumes_and_reports(tmp_path):
    config = BenchmarkConfig(
        kind=SEGMENTATION, methods=["linear", "mona"], tasks=["digit-scenes-fewshot"], seeds=[0], lr_grid=[1e-2, 3e-3],
        workers=1, max_train_steps=2,
    )  # fmt: skip
    results = run_benchmark(config, tmp_path / "work", log=lambda _: None)
    rows = results["rows"]
    assert sorted((r["method"], r["lr"]) for r in rows) == [
        ("linear", 3e-3),
        ("linear", 1e-2),
        ("mona", 3e-3),
        ("mona", 1e-2),
    ]
    for row in rows:
        assert row["curve"][-1] == {"step": 2, "val_score": row["val_score"]}
        assert 0.0 <= row["test_score"] <= 1.0 and len(row["test_per_class"]) == 4
        assert row["test_scores"]["mean_iou"] == row["test_score"]
    linear, mona = (next(r for r in rows if r["method"] == m) for m in ("linear", "mona"))
    assert mona["trainable_params"] > linear["trainable_params"]  # the heads, plus Mona's modules
    for method, choice in results["learning_rates"].items():
        best = max((r for r in rows if r["method"] == method), key=lambda r: r["val_score"])
        assert choice["chosen_lr"] == best["lr"]
    # A second call on the same work dir trains nothing more; a report of more seeds trains nothing either.
    again = run_benchmark(config, tmp_path / "work", log=lambda _: None)
    assert len(again["rows"]) == 4
    more_seeds = BenchmarkConfig(**{**config.__dict__, "seeds": [0, 1]})
    assert run_benchmark(more_seeds, tmp_path / "work", log=lambda _: None, report_only=True)["rows"] == rows
    assert len((tmp_path / "work" / "runs.jsonl").read_text().splitlines()) == 4
    write_results(again, tmp_path / "out")
    report = (tmp_path / "out" / "results.md").read_text()
    assert "validation mIoU over the seeds every rate ran (0);" in report
    assert "| step 2 |" in report and "change, last" not in report  # one evaluation: no change to show
    assert "| mona | 1 |" in report and "| linear | 1 |" in report and (tmp_path / "out" / "results.png").stat().st_size
    assert json.loads((tmp_path / "out" / "results.json").read_text())["learning_rates"] == again["learning_rates"]
    # With four evaluations the curves table shows each curve's change over the last one (is it levelling off?).
    curve = [{"step": s, "val_score": v} for s, v in zip((1, 2, 3, 4), (0.1, 0.2, 0.3, 0.35), strict=True)]
    longer = {**again, "rows": [{**row, "curve": curve} for row in again["rows"]]}
    assert "| step 4 | change, last 1 epoch(s) |" in markdown(longer) and "| 35.0 | +5.0 |" in markdown(longer)


def test_rate_is_chosen_on_the_mean_over_seeds_and_jobs_go_seed_by_seed():
    config = BenchmarkConfig(kind=SEGMENTATION, methods=["mona"], seeds=[0, 1], lr_grid=[1e-3, 1e-2])
    rows = [
        {"method": "mona", "lr": 1e-2, "seed": 0, "val_score": 0.9},  # one lucky seed
        {"method": "mona", "lr": 1e-2, "seed": 1, "val_score": 0.1},
        {"method": "mona", "lr": 1e-3, "seed": 0, "val_score": 0.6},
        {"method": "mona", "lr": 1e-3, "seed": 1, "val_score": 0.6},
    ]
    assert choose_learning_rates(rows, config)["mona"]["chosen_lr"] == 1e-3
    # A seed run at one rate only (as after the choice) is left out of the comparison: both rates ran seed 1 alone.
    choice = choose_learning_rates([rows[1], rows[3], {**rows[1], "seed": 2, "val_score": 0.0}], config)["mona"]
    assert choice == {"val_score_by_lr": {"0.01": 0.1, "0.001": 0.6}, "chosen_lr": 1e-3, "choice_seeds": [1]}
    assert pending_jobs(config, rows[:1]) == [
        Job("mona", "digit-scenes", 1e-3, 0),
        Job("mona", "digit-scenes", 1e-3, 1),
        Job("mona", "digit-scenes", 1e-2, 1),
    ]


def test_longer_schedule_sets_the_steps_and_keeps_its_own_work_dir(tmp_path):
    config = BenchmarkConfig(
        kind=SEGMENTATION, methods=["linear"], tasks=["digit-scenes-fewshot"], seeds=[0], lr_grid=[1e-2]
    )
    longer = BenchmarkConfig(**{**config.__dict__, "num_train_epochs": 2 * config.epochs, "workers": 1})
    assert longer.total_steps == 2 * config.total_steps
    row = {"method": "linear", "lr": 1e-2, "seed": 1, "val_score": 0.5, "curve": [{"step": config.total_steps}]}
    (tmp_path / "runs.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=f"runs of \\[{config.total_steps}\\] steps; this benchmark trains "):
        run_benchmark(longer, tmp_path, log=lambda _: None)
    with pytest.raises(ValueError, match="num_train_epochs must be at least 1"):
        BenchmarkConfig(kind=SEGMENTATION, num_train_epochs=0)


def test_unknown_method_or_task_is_refused():
    with pytest.raises(ValueError, match="Unknown methods"):
        BenchmarkConfig(kind=SEGMENTATION, methods=["mona", "dora"])
    with pytest.raises(ValueError, match="digit-scenes"):
        BenchmarkConfig(kind=SEGMENTATION, tasks=["ade20k"])
    with pytest.raises(ValueError, match="object-detection"):
        BenchmarkConfig(kind="panoptic")


@pytest.mark.parametrize(
    ("kind", "score", "label"),
    [("object-detection", "map", "box AP"), ("instance-segmentation", "mask_map", "mask AP")],
)
def test_detection_kinds_score_on_coco_ap_and_report_it(kind, score, label, tmp_path):
    config = BenchmarkConfig(
        kind=kind, methods=["mona"], tasks=["digit-instances-fewshot"], seeds=[0], lr_grid=[1e-3], workers=1,
        max_train_steps=1,
    )  # fmt: skip
    results = run_benchmark(config, tmp_path / "work", log=lambda _: None)
    (row,) = results["rows"]
    assert row["curve"] == [{"step": 1, "val_score": row["val_score"]}]
    assert row["test_scores"][score] == row["test_score"] and len(row["test_per_class"]) == 3  # digits 0-2
    assert -1.0 <= row["test_score"] <= 1.0 and "map_50" in row["test_scores"]
    write_results(results, tmp_path / "out")
    report = (tmp_path / "out" / "results.md").read_text()
    assert f"| test {label} |" in report and "| mona | 1 | 0.001 |" in report


def test_upernet_speed_run_measures_every_method_against_full_lora_and_the_bare_model(tmp_path):
    from harness.speed import MONA_TARGETS, SpeedConfig, run_speed

    config = SpeedConfig(methods=["mona"], model="upernet-swin-t", image_size=32, repeats=1, warmup=1)
    report = run_speed(config, tmp_path / "speed.json", "test", log=lambda _: None)
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["full", "lora", "mona"]
    assert rows["full"]["train_step_ratio_vs_full"] == 1.0 and rows["lora"]["train_step_ratio_vs_lora"] == 1.0
    assert rows["mona"]["trainable_params"] < rows["full"]["trainable_params"]
    assert all(row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0 for row in rows.values())
    assert report["mona_targets"] == MONA_TARGETS["upernet-swin-t"] and "32x32" in report["model"]
    assert set(report["mona_meets_targets"]) == set(MONA_TARGETS["upernet-swin-t"])
    assert json.loads((tmp_path / "speed.json").read_text())["rows"] == report["rows"]


# RT-DETR selects its 300 queries among the anchors of its three levels: 160 pixels give 525 of them.
@pytest.mark.parametrize(("model", "size"), [("rt-detr-swin-t", 160), ("mask2former-swin-t", 64)])
def test_detector_speed_runs_train_on_random_objects_and_compare_every_method(model, size, tmp_path):
    from harness.speed import SpeedConfig, run_speed

    config = SpeedConfig(methods=["mona"], model=model, image_size=size, repeats=1, warmup=0)
    report = run_speed(config, tmp_path / "speed.json", "test", log=lambda _: None)
    rows = {row["method"]: row for row in report["rows"]}
    assert list(rows) == ["full", "lora", "mona"] and f"{size}x{size}" in report["model"]
    assert max(rows["mona"]["trainable_params"], rows["lora"]["trainable_params"]) < rows["full"]["trainable_params"]
    assert all(row["train_step_median_ms"] > 0 and row["infer_latency_ratio_vs_base"] > 0 for row in rows.values())
    assert report["mona_targets"] == {} and report["mona_meets_targets"] == {}


def test_each_dense_kind_defaults_to_its_own_folders():
    """A run of one kind with the default --work_dir and --output_dir never writes into another kind's results."""
    from harness.cli import DENSE_FOLDERS, build_dense_parser
    from harness.kinds import DENSE_KINDS

    assert sorted(DENSE_FOLDERS) == sorted(DENSE_KINDS) and len(set(DENSE_FOLDERS.values())) == len(DENSE_KINDS)
    args = build_dense_parser().parse_args(["--kind", "object-detection"])
    assert args.work_dir is None and args.output_dir is None  # dense_main fills in the kind's folders
