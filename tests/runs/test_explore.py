"""explore on the reference CNN with two candidates: a stopped explore resumes without redoing the finished
candidate, the one within the budget is picked, verified and copied, and a budget nobody meets is exit 13."""

import json

import pytest
from conftest import REFERENCE_MODEL

import tflite_pipeline as tp
from tflite_pipeline.cli import main
from tflite_pipeline.errors import BudgetError, RecipeError
from tflite_pipeline.runs import pipeline
from tflite_pipeline.runs.explore import (
    CANDIDATES,
    SCRATCH_CANDIDATES,
    Candidate,
    ExploreBudget,
    candidate_recipe,
    candidates_named,
    explore,
)

TWO = candidates_named(["ptq", "prune80-pqat"])
FAST = {"train.batch_size": 16, "prune.epochs": 1, "prune.exclude": ["^stem$"], "qat.epochs": 1,
        "convert.calibration_samples": 20, "bench.runs": 3, "bench.warmup": 1,
        "verify.min_agreement": 0.0}   # 2 epochs on tiny data: the agreement gate is not the point here


@pytest.fixture(scope="module")
def base(tiny_data):
    return tp.load_recipe("default").with_overrides({"model.source": str(REFERENCE_MODEL), "train.epochs": 0,
                                                     "data.root": str(tiny_data)})


@pytest.fixture(scope="module")
def explored(base, tmp_path_factory):
    """An explore stopped (Ctrl-C) as its second candidate starts, then run again with a gzip budget only the
    pruned candidate meets."""
    out = tmp_path_factory.mktemp("explore")
    calls = []
    real_run = pipeline.run

    def stopping_run(recipe, **kwargs):
        calls.append(kwargs["run_name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(recipe, **kwargs)

    pipeline.run = stopping_run
    try:
        with pytest.raises(KeyboardInterrupt):
            explore(base, ExploreBudget(max_top1_drop=100), candidates=TWO, overrides=FAST, output_dir=out,
                    log=lambda _: None)
    finally:
        pipeline.run = real_run
    first = json.loads((out / "explore" / "explore.json").read_text())
    ptq_gzip = first["results"][0]["gzip_bytes"]
    budget = ExploreBudget(max_gzip_kb=0.8 * ptq_gzip / 1024, max_top1_drop=100)
    report = explore(base, budget, candidates=TWO, overrides=FAST, output_dir=out, log=lambda _: None)
    return out / "explore", report, calls


def test_a_stopped_explore_resumes_without_redoing_finished_candidates(explored):
    _, report, calls = explored
    assert calls == ["ptq", "prune80-pqat"]   # the first explore stopped as the second candidate started
    assert [(r.name, r.reused) for r in report.results] == [("ptq", True), ("prune80-pqat", False)]


def test_the_candidate_within_the_budget_is_recommended_verified_and_copied(explored):
    root, report, _ = explored
    ptq, pruned = report.result("ptq"), report.result("prune80-pqat")
    assert not ptq.meets and "gzip size" in ptq.misses[0] and pruned.meets
    assert pruned.gzip_bytes < ptq.gzip_bytes and pruned.macs == ptq.macs and pruned.latency_ms > 0
    assert report.recommended == "prune80-pqat"
    shipped = root / report.recommended_file
    assert shipped.read_bytes() == (root / pruned.file).read_bytes()
    assert sorted(p.name for p in shipped.parent.iterdir()) == sorted(
        [shipped.name, "labels.txt", "preprocessing.json", "recommended.json"])
    data = json.loads((root / "explore.json").read_text())
    assert data["recommended"] == "prune80-pqat" and len(data["results"]) == 2
    markdown = (root / "explore.md").read_text()
    assert "Recommended: **prune80-pqat**" in markdown and "![explore_gzip.png](explore_gzip.png)" in markdown
    assert (root / "explore_gzip.png").read_bytes()[:4] == b"\x89PNG"


def test_no_candidate_within_the_budget_is_exit_13_with_the_measurements_written(explored, tiny_data, capsys):
    root, _, _ = explored
    code = main(["explore", "--model", str(REFERENCE_MODEL), "--data", str(tiny_data), "--candidates",
                 "ptq,prune80-pqat", "--max-gzip-kb", "0.5", "--max-top1-drop", "100",
                 *[arg for key, value in FAST.items() for arg in ("--set", f"{key}={json.dumps(value)}")],
                 "--output-dir", str(root.parent)])
    assert code == BudgetError.exit_code
    err = capsys.readouterr().err
    assert "No candidate is within the budget" in err and "gzip size" in err
    data = json.loads((root / "explore.json").read_text())
    assert data["recommended"] is None and all(r["reused"] for r in data["results"])


@pytest.mark.fast
def test_candidates_take_the_bundled_recipes_sections_and_the_users_overrides_win(base):
    (pruned,) = candidates_named(["prune80-pqat"])
    recipe = candidate_recipe(base, pruned, ExploreBudget(threads=2), {"prune.epochs": 1})
    assert recipe.prune.enabled and recipe.prune.target_sparsity == 0.8 and recipe.prune.epochs == 1
    assert recipe.distill.enabled and recipe.qat.enabled and recipe.bench.threads == 2
    assert recipe.model.source == str(REFERENCE_MODEL) and recipe.convert.variants == ()
    with pytest.raises(RecipeError, match="Received candidate 'nope'"):
        candidates_named(["nope"])
    with pytest.raises(RecipeError, match="max_gzip_kb=0"):
        ExploreBudget(max_gzip_kb=0)


def test_a_candidate_that_fails_is_listed_as_not_run_and_the_others_go_on(explored, base, monkeypatch):
    root, _, _ = explored

    def failing_run(recipe, **kwargs):
        raise RecipeError("Received `lowrank.mac_budget=0.5`, but factoring every candidate layer keeps 60%")

    monkeypatch.setattr(pipeline, "run", failing_run)
    report = explore(base, ExploreBudget(max_top1_drop=100), candidates=candidates_named(["ptq", "lowrank70-qat"]),
                     overrides=FAST, output_dir=root.parent, log=lambda _: None)
    assert [r.name for r in report.results] == ["ptq"] and report.recommended == "ptq"
    assert report.skipped["lowrank70-qat"].startswith("failed (RecipeError, exit 4): Received `lowrank.mac_budget")
    assert "- lowrank70-qat not run: failed (RecipeError" in (root / "explore.md").read_text()


@pytest.mark.fast
def test_width_and_resolution_candidates_train_from_scratch_only_with_a_from_scratch_budget(base):
    (narrow,) = candidates_named(["w0.35-48px-qat"])
    with pytest.raises(RecipeError, match="from-scratch budget"):
        candidate_recipe(base, narrow, ExploreBudget())
    recipe = candidate_recipe(base, narrow, ExploreBudget(), scratch_epochs=7)
    assert (recipe.model.source, recipe.model.alpha, recipe.model.input_size) == ("mobilenet_v2", 0.35, 48)
    assert recipe.train.epochs == 7 and recipe.qat.enabled and recipe.data.root == base.data.root
    with pytest.raises(RecipeError, match="from-scratch budget"):   # refused before any candidate runs
        explore(base, ExploreBudget(), candidates=[narrow], log=lambda _: None)
    with pytest.raises(RecipeError, match="scratch_epochs=0"):
        explore(base, ExploreBudget(), scratch_epochs=0, log=lambda _: None)
    assert all(c.from_scratch for c in SCRATCH_CANDIDATES) and not any(c.from_scratch for c in CANDIDATES)


def test_a_from_scratch_candidate_runs_after_the_base_and_its_drop_is_against_the_base_baseline(explored, base):
    root, _, _ = explored
    scratch = Candidate("w0.35-32px-ptq", "default", {"model.alpha": 0.35, "model.input_size": 32},
                        "MobileNetV2 0.35 @ 32 from scratch", from_scratch=True)
    messages = []
    report = explore(base, ExploreBudget(max_top1_drop=100), candidates=[scratch, candidates_named(["ptq"])[0]],
                     overrides=FAST, output_dir=root.parent, scratch_epochs=1, log=messages.append)
    assert [r.name for r in report.results] == ["ptq", "w0.35-32px-ptq"] and report.result("ptq").reused
    ptq, narrow = report.result("ptq"), report.result(scratch.name)
    assert report.baseline_top1 == ptq.float_top1 and narrow.float_top1 is not None
    assert narrow.top1_drop == pytest.approx(100 * (ptq.float_top1 - narrow.top1), abs=1e-3)
    assert narrow.macs != ptq.macs   # another architecture, built and trained here
    recipe = json.loads((root / "candidates" / scratch.name / "report.json").read_text())["recipe"]
    assert recipe["model"]["source"] == "mobilenet_v2" and recipe["train"]["epochs"] == 1
