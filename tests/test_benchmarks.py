"""benchmarks/recipe_runs.py: runs each recipe as a user would and tabulates report.json files."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_RECIPE = '''
import json, sys
from pathlib import Path
args = sys.argv[1:]
recipe, seed, out = Path(args[0]).name, int(args[args.index("--seed") + 1]), Path(args[args.index("--output_dir") + 1])
if "boom" in args:
    sys.exit(3)
algo = recipe.replace("_llada.py", "")
final = {"diffu_grpo": 0.40, "gdpo": 0.38, "dmpo": 0.36}[algo] + 0.01 * seed
best = final - 0.01 + 0.01 * seed  # seed 0: best < final; seed 1: best = final
capped = algo == "dmpo" and seed == 1  # the time cap bound before max_steps
steps = 8 if capped else 10
val = [(0, 0.30), (5, 0.33), (steps, 0.32 + 0.02 * seed)]  # best step: 5 (seed 0), the last (seed 1)
best_step, best_val = max(val, key=lambda p: p[1])
test = lambda acc: {"task": "countdown", "split": "test", "num_samples": 400, "accuracy": acc, "seconds": 4.0}
before, test_final = test(0.35), test(final)
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps({
    "title": f"{algo} · tiny · countdown", "steps": steps, "max_steps": 10, "time_cap_hit": capped,
    "train_minutes_cap": 60.0, "train_seconds": 100.0,
    "seconds": {"sampler": 60.0, "nograd_likelihoods": 10.0, "rollout_other": 5.0},
    "nfe": {"sampler": 1000 * (seed + 1), "policy": 500},
    "before": before, "test_final": test_final, "test_best": test(best),
    "best_step": best_step, "best_validation_accuracy": best_val,
    "validation_curve": [{"step": s, "accuracy": a, "mean_reward": a, "num_samples": 200, "seconds": 2.0} for s, a in val],
    "val_samples": 200, "eval_every_steps": 5, "eval_seconds": 22.0,
    "heldout_before": before, "heldout_after": test_final,
}))
'''


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_runs_runs_every_recipe_and_seed_and_tabulates(tmp_path, capsys):
    recipe_runs = load("recipe_runs")
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    docs = tmp_path / "docs" / "recipe_runs"
    argv = ["--seeds", "0,1", "--out_dir", str(tmp_path / "runs"), "--docs", str(docs),
            "--launcher", f"{sys.executable} {fake}"]
    recipe_runs.main(argv)
    table = docs.with_suffix(".md").read_text()
    # test accuracy: before → final / best (mean ± sd), paired gains per seed, mean ± sd and the 95 % t-interval
    # (t(1) = 12.706: +5.5 ± 12.706 · 0.71 / √2), best step per seed (its validation accuracy)
    assert ("| diffu-GRPO | 0,1 | 35.0 ± 0.0 | **40.5 ± 0.7** | **40.0 ± 1.4** | +5.00, +6.00 | +4.00, +6.00 | "
            "+5.50 ± 0.71 (n=2; 95 % CI [-0.85, +11.85]) | +5.00 ± 1.41 (n=2; 95 % CI [-7.71, +17.71]) | "
            "5 (33.0), 10 (34.0) |") in table
    assert "| GDPO | 0,1 | 35.0 ± 0.0 | **38.5 ± 0.7** | **38.0 ± 1.4** |" in table
    assert "| DMPO | 0,1 | 35.0 ± 0.0 | **36.5 ± 0.7** | **36.0 ± 1.4** |" in table and "| 5 (33.0), 8 (34.0) |" in table
    # budget: steps / max_steps, the time cap, row-forwards (mean of 1,500 and 2,500), s / step without the
    # evaluations inside train_runtime ((100 - 4 - 3 × 2) / 10), shares with the evaluations (4 + 3 × 2 of 100 s)
    assert "| diffu-GRPO | 10/10, 10/10 | no | 2 k | 9.0 | 60 / 10 / 5 / 10 / 15 % |" in table
    assert "| DMPO | 10/10, 8/10 | yes: s1 | 2 k | 10.0 | 60 / 10 / 5 / 10 / 15 % |" in table
    assert "400 countdown test prompts" in table and "Validation: 200 prompts" in table and "every 5 optimizer steps" in table
    runs = json.loads(docs.with_suffix(".json").read_text())
    assert len(runs) == 6 and all(r["returncode"] == 0 and r["peak_rss_mb"] > 0 for r in runs)
    assert docs.with_suffix(".png").stat().st_size > 1000
    # finished runs are not repeated: a failing launcher is never called
    recipe_runs.main([*argv[:-1], f"{sys.executable} {fake} boom"])
    # a failing run stops the sweep with the log to read
    with pytest.raises(SystemExit, match="failed"):
        recipe_runs.main([*argv[:-1], f"{sys.executable} {fake} boom", "--rerun"])


def test_recipe_runs_pairs_every_recipe_with_a_reference_seed_by_seed(tmp_path):
    """--paired_with gdpo: each other recipe minus GDPO on the same seed (final and best-on-validation), with the
    mean ± sd and t-interval; a seed only one of them ran is left out; the reference must be among --recipes."""
    recipe_runs = load("recipe_runs")
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    runs, docs = tmp_path / "runs", tmp_path / "docs" / "paired"
    recipe_runs.main(["--recipes", "gdpo,dmpo", "--seeds", "0,1", "--out_dir", str(runs), "--docs", str(docs),
                      "--launcher", f"{sys.executable} {fake}"])
    recipe_runs.main(["--recipes", "diffu_grpo", "--seeds", "0", "--out_dir", str(runs), "--docs", str(docs),
                      "--launcher", f"{sys.executable} {fake}"])
    recipe_runs.main(["--recipes", "gdpo,dmpo,diffu_grpo", "--seeds", "0,1", "--out_dir", str(runs),
                      "--docs", str(docs), "--summarize_only", "--paired_with", "gdpo"])
    md = docs.with_suffix(".md").read_text()
    assert "## Against GDPO, seed by seed" in md
    # DMPO final 36 + s vs GDPO 38 + s; best = final - 1 + s for both: -2.00 on each seed, sd 0
    assert ("| DMPO | 0,1 | -2.00, -2.00 | -2.00 ± 0.00 (n=2; 95 % CI [-2.00, -2.00]) | -2.00, -2.00 | "
            "-2.00 ± 0.00 (n=2; 95 % CI [-2.00, -2.00]) |") in md
    assert "| diffu-GRPO | 0 | +2.00 | +2.00 (n=1; sd, 95 % CI n/a) |" in md and "| GDPO | 0,1 | -" not in md
    with pytest.raises(SystemExit, match="--paired_with 'espo' is not one of --recipes"):
        recipe_runs.main(["--recipes", "gdpo", "--out_dir", str(runs), "--summarize_only", "--paired_with", "espo"])


def test_recipe_runs_writes_its_tables_next_to_the_runs_by_default(tmp_path):
    """Without --docs the tables go to <out_dir>/summary.*, never over the committed docs/recipe_runs.*."""
    recipe_runs = load("recipe_runs")
    runs = tmp_path / "runs"
    _write_run(runs / "gdpo_s0", {**OLD_STYLE, "heldout_after": {"accuracy": 0.38, "num_samples": 400}})
    committed = ROOT / "docs" / "recipe_runs.md"
    before = committed.read_bytes() if committed.exists() else None
    recipe_runs.main(["--summarize_only", "--recipes", "gdpo", "--seeds", "0", "--out_dir", str(runs)])
    assert "| GDPO |" in (runs / "summary.md").read_text() and (runs / "summary.json").exists()
    assert (committed.read_bytes() if committed.exists() else None) == before
    assert "alone on the machine" in (runs / "summary.md").read_text()  # the default conditions
    recipe_runs.main(["--summarize_only", "--recipes", "gdpo", "--seeds", "0", "--out_dir", str(runs),
                      "--conditions", "two at a time with --torch_threads 1"])
    md = (runs / "summary.md").read_text()
    assert "two at a time with --torch_threads 1" in md and "alone on the machine" not in md


def test_recipe_runs_variants_launch_their_recipe_with_the_method_flags_then_the_users(tmp_path):
    """JustGRPO-Fast and ESPO are a recipe plus flags: the base recipe is launched, the method's flags follow the
    seed and output folder, and the user's extra flags come last (so they win); the table names the method."""
    recipe_runs = load("recipe_runs")
    fake = tmp_path / "fake_recipe.py"
    fake.write_text(FAKE_RECIPE)
    out, docs = tmp_path / "runs", tmp_path / "docs" / "variants"
    recipe_runs.main(["--recipes", "justgrpo,espo", "--seeds", "0", "--out_dir", str(out), "--docs", str(docs),
                      "--launcher", f"{sys.executable} {fake}", "--max_steps", "3"])
    for algo, recipe, flag in (("justgrpo", "diffu_grpo", "ar_order_exact"), ("espo", "gdpo", "sequence_k2")):
        cmd = json.loads((out / f"{algo}_s0" / "run.json").read_text())["command"].split()
        assert Path(cmd[2]).name == f"{recipe}_llada.py" and flag in cmd
        assert cmd[-2:] == ["--max_steps", "3"] and cmd.index(flag) < len(cmd) - 2
    table = docs.with_suffix(".md").read_text()
    assert "| JustGRPO-Fast | 0 |" in table and "| ESPO | 0 |" in table
    jg = json.loads((out / "justgrpo_s0" / "run.json").read_text())["command"]
    assert "--eval_block_length 16" in jg and "--block_length 1" in jg  # trains left to right, evaluates as all


def test_recipe_runs_rejects_unknown_recipe(tmp_path):
    with pytest.raises(SystemExit, match="unknown recipe"):
        load("recipe_runs").main(["--recipes", "gdpo,grpo", "--out_dir", str(tmp_path)])


OLD_STYLE = {  # a report from before the validation protocol: heldout_before / heldout_after only
    "title": "gdpo · tiny · countdown", "steps": 7, "train_seconds": 100.0,
    "seconds": {"sampler": 60.0, "nograd_likelihoods": 10.0, "rollout_other": 5.0},
    "heldout_before": {"accuracy": 0.35, "num_samples": 400},
}


def _write_run(d: Path, report: dict, meta: dict | None = None) -> None:
    d.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps(report))
    if meta is not None:
        (d / "run.json").write_text(json.dumps(meta))


def test_recipe_runs_tabulates_old_style_reports_and_unsuffixed_folders(tmp_path):
    """Old-style reports degrade to "–"; ``<algo>`` folders (no ``_s<seed>``) are found, seed from run.json or 0."""
    recipe_runs = load("recipe_runs")
    runs, docs = tmp_path / "runs", tmp_path / "docs" / "recipe_runs"
    for seed in (0, 1):
        _write_run(runs / f"gdpo_s{seed}", {**OLD_STYLE, "heldout_after": {"accuracy": 0.38 + 0.01 * seed, "num_samples": 400}},
                   {"algo": "gdpo", "seed": seed, "wall_seconds": 600.0, "peak_rss_mb": 2048.0})
    _write_run(runs / "gdpo", {**OLD_STYLE, "heldout_after": {"accuracy": 0.5, "num_samples": 400}})  # seed 0 again
    _write_run(runs / "dmpo", {**OLD_STYLE, "title": "dmpo · tiny · countdown",
                               "heldout_after": {"accuracy": 0.37, "num_samples": 400}})
    _write_run(runs / "diffu_grpo", {**OLD_STYLE, "heldout_after": {"accuracy": 0.36, "num_samples": 400}}, {"seed": 2})
    recipe_runs.main(["--summarize_only", "--out_dir", str(runs), "--docs", str(docs)])  # --layout auto
    table = docs.with_suffix(".md").read_text()
    assert ("| GDPO | 0,1 | 35.0 ± 0.0 | **38.5 ± 0.7** | – | +3.00, +4.00 | – | "
            "+3.50 ± 0.71 (n=2; 95 % CI [-2.85, +9.85]) | – | – |") in table  # the flat gdpo (seed 0 again) skipped
    assert "| GDPO | 7/–, 7/– | – | – | 14.3 | 60 / 10 / 5 / 0 / 25 % | 10.0 min | 2.0 GB |" in table
    assert "| DMPO | 0? | 35.0 | **37.0** | – | +2.00 | – | +2.00 (n=1; sd, 95 % CI n/a) | – | – |" in table
    assert "| DMPO | 7/– | – | – | 14.3 | 60 / 10 / 5 / 0 / 25 % | – | – |" in table
    assert "| diffu-GRPO | 2 | 35.0 | **36.0** |" in table  # seed from run.json, whatever --seeds says
    assert "assumed 0" in table and "No run has a validation curve" in table
    assert docs.with_suffix(".png").stat().st_size > 1000
    # --layout seeded: only <algo>_s<seed>; --layout flat: only <algo> (and never launches anything)
    recipe_runs.main(["--summarize_only", "--out_dir", str(runs), "--docs", str(docs), "--layout", "seeded"])
    table = docs.with_suffix(".md").read_text()
    assert "| GDPO | 0,1 |" in table and "DMPO" not in table
    recipe_runs.main(["--out_dir", str(runs), "--docs", str(docs), "--layout", "flat", "--launcher", "false"])
    table = docs.with_suffix(".md").read_text()
    assert "| GDPO | 0? | 35.0 | **50.0** |" in table and "| DMPO | 0? |" in table
    assert len(json.loads(docs.with_suffix(".json").read_text())) == 3


def test_recipe_runs_reads_search_metrics_from_the_log_of_older_reports(tmp_path):
    """A TR2-D2 report written before the reward curve kept ``search/*``: they come from run.log's metric dicts,
    one per logged step, and only when the counts match."""
    recipe_runs = load("recipe_runs")
    d = tmp_path / "tr2d2_s0"
    curve = [{"step": s, "seconds": 10.0 * s, "reward": 0.3, "nfe_total": 1000.0 * s} for s in (1, 2)]
    _write_run(d, {**OLD_STYLE, "reward_curve": curve})
    log = ["noise {'not': 'a metric'}",
           "{'loss': 0.1, 'reward': 0.3, 'search/buffer_best_reward': 0.5, 'search/nfe_per_prompt': 744.0}",
           "  3%|▎ | 1/13 [00:10<02:00]{'loss': 0.2, 'reward': 0.4, 'search/buffer_best_reward': 0.75}",
           "{'train_runtime': 20.0, 'search/buffer_best_reward': 1.0}"]  # no reward: not a step
    (d / "run.log").write_text("\n".join(log))
    report, _ = recipe_runs._load(d)
    assert [p.get("search/buffer_best_reward") for p in report["reward_curve"]] == [0.5, 0.75]
    assert report["reward_curve"][0]["search/nfe_per_prompt"] == 744.0
    (d / "run.log").write_text("\n".join(log[:2]))  # one dict for two steps: left alone
    report, _ = recipe_runs._load(d)
    assert not any(k.startswith("search/") for p in report["reward_curve"] for k in p)


def test_recipe_runs_t_interval():
    recipe_runs = load("recipe_runs")
    assert recipe_runs.t975(1) == 12.706 and recipe_runs.t975(2) == 4.303 and recipe_runs.t975(1000) == 1.96
    assert recipe_runs.paired_gain([1.0, 2.0, 3.0]) == "+2.00 ± 1.00 (n=3; 95 % CI [-0.48, +4.48])"
    assert recipe_runs.paired_gain([]) == "–"


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rollout_speed_parses_contenders_and_mcnemar():
    rs = _load_benchmark("rollout_speed")
    assert rs.parse_contender("plain") == {} and rs.parse_contender("today") == {}
    assert rs.parse_contender("thr0.9+dual+r4") == {"transfer": "threshold", "threshold": 0.9, "cache": "dual",
                                                    "cache_refresh": 4}
    assert rs.parse_contender("factor1") == {"transfer": "factor", "factor": 1.0}
    with pytest.raises(SystemExit, match="unknown contender part"):
        rs.parse_contender("thr0.9+duel")
    # exact McNemar: 0 vs 6 discordant pairs → p = 2 / 2^6
    a, b = [True] * 6 + [False] * 4, [False] * 6 + [False] * 4
    assert rs.mcnemar_p(a, b) == pytest.approx(2 / 64)
    assert rs.mcnemar_p(a, a) == 1.0


@pytest.mark.skipif(not (ROOT / "dlm_trl" / "models" / "tiny" / "checkpoint" / "model.safetensors").exists(),
                    reason="embedded checkpoint missing")
def test_rollout_speed_end_to_end_small(tmp_path, capsys):
    rs = _load_benchmark("rollout_speed")
    out = tmp_path / "rs"
    rs.main(["--contenders", "plain,thr0.9+dual", "--batches", "8", "--repeats", "1", "--accuracy_samples", "4",
             "--pass_samples", "1", "--threads", "1", "--out", str(out)])
    table = out.with_suffix(".md").read_text()
    assert "| thr0.9+dual |" in table and "| plain |" in table
    data = json.loads(out.with_suffix(".json").read_text())["results"]
    assert data["plain"]["speed"]["8"]["nfe"] == 24.0 and data["thr0.9+dual"]["speed"]["8"]["nfe"] < 24


@pytest.mark.skipif(not (ROOT / "dlm_trl" / "models" / "tiny" / "checkpoint" / "model.safetensors").exists(),
                    reason="embedded checkpoint missing")
def test_rollout_correction_gap_small(tmp_path):
    gap = _load_benchmark("rollout_correction_gap")
    out = tmp_path / "gap"
    gap.main(["--prompts", "1", "--threads", "1", "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert len(results) == len(gap.DECODERS) * len(gap.ESTIMATORS)
    for r in results.values():
        assert math.isfinite(r["gap_token_mean"]) and r["commit_logprob_mean"] <= 0
        for mode in ("token_truncate", "sequence_truncate"):
            assert 1 / 3 - 1e-6 <= r[f"{mode}/weight_mean"] <= 3 + 1e-6
            assert 0 <= r[f"{mode}/changed_frac"] <= 1
    assert "| plain | one_step_unmasking (diffu-GRPO) |" in out.with_suffix(".md").read_text()


def test_guidance_sweep_settings_and_report(tmp_path):
    gs = load("guidance_sweep")
    sweep = gs.settings([0.0, 1.0, 2.0], ["constant", "late"])
    assert sweep[0]["name"] == "unguided" and sweep[0]["cfg_scale"] == 0.0
    assert len(sweep) == 1 + 2 * 2 * 2  # scale 0 once; scale > 0 × schedule × plain / rate-preserving
    assert {s["name"] for s in sweep[1:]} >= {"s1-late-rate", "s2-constant-plain"}
    rows = [{**s, "val_accuracy": 0.3 + 0.01 * i, "nfe": 10.0, "val_seconds": 1.0} for i, s in enumerate(sweep)]
    results = {
        "args": {"transfer": "threshold", "threshold": 0.9, "late_fraction": 0.5, "val_samples": 4, "test_samples": 4},
        "tasks": {"countdown": {"rows": rows, "best_on_validation": sweep[-1]["name"],
                                "test": {"unguided": {"accuracy": 0.25, "nfe": 10.0},
                                         sweep[-1]["name"]: {"accuracy": 0.5, "nfe": 20.0}},
                                "test_delta_points": 25.0, "test_mcnemar_p": 0.5}},
    }
    gs.write(results, tmp_path / "g")
    md = (tmp_path / "g.md").read_text()
    assert "| s2-late-rate | 2 | late | rate-preserving |" in md and "Δ +25.00 points" in md
    assert json.loads((tmp_path / "g.json").read_text())["tasks"]["countdown"]["best_on_validation"] == "s2-late-rate"


NSC_SMALL = ["--seeds", "0", "--steps", "2", "--eval_samples", "64", "--batch", "16", "--hidden", "16", "--heads", "2"]


def test_neural_sampler_compare_ising_smoke(tmp_path, capsys):
    """2 x 2 Ising, β above and below β_c, MDNS and PDNS, one seed, in this process; exact references."""
    from dlm_trl.neural_samplers.ising import exact_ising

    nsc = load("neural_sampler_compare")
    out, work = tmp_path / "nsc", tmp_path / "runs"
    argv = ["--lattice", "2", *NSC_SMALL, "--out", str(out), "--work", str(work)]
    res = nsc.main(argv)
    md = out.with_suffix(".md").read_text()
    assert "# MDNS vs PDNS on the periodic Ising model" in md and "2 rounds × 16 samples" in md
    for beta, phase in (("0.3", "disordered (β < β_c)"), ("0.6", "ordered (β > β_c)")):
        assert f"| 2 | {beta} | {phase} | MDNS | 0 |" in md and f"| 2 | {beta} | {phase} | PDNS | 0 |" in md
        assert f"| 2 | {beta} | MDNS | 0 |" in md  # per-seed table
    assert f"| 2 | 0.3 | 0.68 | exact (enumeration) | {exact_ising(2, 0.3).energy:.4f} |" in md
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["settings"]["betas"] == [0.3, 0.6] and data["settings"]["methods"] == ["mdns", "pdns"]
    assert len(data["runs"]) == 4 and {(r["beta"], r["method"]) for r in data["runs"]} == {
        (0.3, "mdns"), (0.3, "pdns"), (0.6, "mdns"), (0.6, "pdns")}
    for r in data["runs"]:
        m, rep = r["metrics"], r["report"]
        assert rep["args"]["steps"] == 2 and len(rep["history"]) == 2 and rep["args"]["q"] == 2
        assert rep["reference"]["log_z"] == pytest.approx(exact_ising(2, r["beta"]).log_z)
        assert 0 <= m["mode_coverage"] <= 1 and m["mode_tv"] == pytest.approx(abs(m["mode_coverage"] - 0.5))
        assert m["err_log_z"] == rep["trained"]["err_log_z"] and 0 < m["ess"] <= 1 and m["err_energy"] >= 0
        assert (Path(r["dir"]) / "run.log").read_text().count("step") >= 2
    assert res["runs"][0]["metrics"] == data["runs"][0]["metrics"]
    assert out.with_suffix(".png").stat().st_size > 1000
    # a second call reuses the finished runs (same recipe arguments) instead of retraining
    capsys.readouterr()
    assert "reused from earlier calls" not in md
    nsc.main(argv)
    assert capsys.readouterr().out.count(": reused ") == 4
    # the header says the runs were reused, so its wall-clock is not read as their training time
    assert "4 of 4 runs reused from earlier calls" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        nsc.main([*argv, "--beta", "0.5"])  # a per-run recipe flag: use --betas
    with pytest.raises(SystemExit):
        nsc.main([*argv, "--methods", "mdns,grpo"])


def test_neural_sampler_compare_potts_wolff_in_a_subprocess(tmp_path):
    """3-state Potts on 2 x 2 against a Wolff reference computed once by the benchmark; one run through the
    subprocess path (--jobs 2)."""
    nsc = load("neural_sampler_compare")
    out = tmp_path / "nsc"
    nsc.main(["--q", "3", "--lattice", "2", "--betas", "1.2", "--methods", "pdns", "--reference", "wolff",
              "--mc_samples", "500", "--jobs", "2", *NSC_SMALL, "--out", str(out), "--work", str(tmp_path / "runs")])
    md = out.with_suffix(".md").read_text()
    assert "3-state Potts" in md and "Wolff MC (500 measurements, seed 0)" in md
    assert "| 2 | 1.2 | ordered (β > β_c) | PDNS | 0 |" in md and "MDNS" not in md.split("## Per seed")[1]
    data = json.loads(out.with_suffix(".json").read_text())
    (run,) = data["runs"]
    assert run["report"]["reference"]["n_samples"] == 500 and run["report"]["reference"]["q"] == 3
    assert run["metrics"]["err_log_z"] is None and 0 <= run["metrics"]["mode_coverage"] <= 1
    assert run["metrics"]["mode_tv"] == run["report"]["trained"]["mode_tv"]
    (ref,) = data["references"]
    assert Path(ref["file"]).exists() and ref["stats"]["beta"] == 1.2


def test_tree_search_toy_table(tmp_path):
    """The search reaches the uniform toy's optimum in every search with widening (as the committed table says)."""
    bench = load("tree_search_toy")
    out = tmp_path / "toy"
    rows = bench.main(["--scale", "0", "--iterations", "40", "--widening", "0.5", "--prompts", "5", "--out", str(out)])
    assert len(rows) == 1 and rows[0]["found"] == 1.0 and rows[0]["p_optimum"] == pytest.approx(1 / 81)
    assert 0 < rows[0]["plain_found_prob"] < 1 and rows[0]["plain_samples"] == int(rows[0]["nfe_per_search"] // 4)
    md = out.with_suffix(".md").read_text()
    assert "| 0 | 1.23e-02 | 40 × 4 | 0.5 |" in md and "100 % |" in md
    assert json.loads(out.with_suffix(".json").read_text())[0]["found"] == 1.0


def test_rl_step_time_contenders_and_step_durations():
    bench = load("rl_step_time")
    assert bench.parse_contenders("today, fast") == ["today", "fast"]
    with pytest.raises(SystemExit, match="Did you mean 'fast'"):
        bench.parse_contenders("today,fats")
    with pytest.raises(SystemExit, match="twice"):
        bench.parse_contenders("fast,fast")
    curve = [{"step": 1, "seconds": 9.0}, {"step": 2, "seconds": 12.0}, {"step": 3, "seconds": 16.0}]
    assert bench.step_seconds({"reward_curve": curve}) == [3.0, 4.0]  # the first (warm-up) step is not timed
    with pytest.raises(ValueError, match="skips from step 1 to 3"):
        bench.step_seconds({"reward_curve": [curve[0], curve[2]]})
    with pytest.raises(ValueError, match="at least 2"):
        bench.step_seconds({"reward_curve": curve[:1]})
    rows = bench.summarize({"today": [{"step_seconds": 40.0, "sampler_seconds_per_step": 30.0}] * 2,
                            "fast": [{"step_seconds": 18.0, "sampler_seconds_per_step": 8.0},
                                     {"step_seconds": 20.0, "sampler_seconds_per_step": 9.0}]},
                           {"argv": "", "conditions": "c", "steps": 5, "repeats": 2, "today_rev": "a" * 40})[1]
    assert rows["fast"]["step_seconds"] == 19.0 and rows["fast"]["vs_today"] == 0.475 and "vs_plain" not in rows["fast"]


def test_rl_step_time_bad_revision_says_what_to_do():
    with pytest.raises(SystemExit, match="Leave 'today' out of --contenders"):
        load("rl_step_time").resolve_today("no-such-revision-xyz")


RL_STEP_SMALL = ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--num_train_prompts",
                 "16", "--gen_length", "16", "--block_length", "16", "--diffusion_steps", "8"]


def test_rl_step_time_end_to_end_runs_todays_recipe_from_git_history(tmp_path, monkeypatch):
    """`today` is the recipe of the last one-function-sampler commit, extracted from git and run with its own
    dlm_trl: every row takes all its sampler steps (no parallel decoding), and its trainer predates the
    `sampler/tokens_per_forward` metric."""
    bench = load("rl_step_time")
    try:
        rev = bench.resolve_today(None)
    except SystemExit:
        pytest.skip("no git history of the sampler package commit here (shallow clone or source archive)")
    out = tmp_path / "rst"
    monkeypatch.chdir(tmp_path)  # a relative --work_dir (the runs start in their recipe's tree, not here)
    rows = bench.main(["--contenders", "today,fast", "--steps", "2", "--repeats", "1", "--threads", "1",
                       "--work_dir", "w", "--out", str(out), *RL_STEP_SMALL])
    assert set(rows) == {"today", "fast"} and rows["today"]["vs_today"] == 1.0 and rows["fast"]["step_seconds"] > 0
    data = json.loads(out.with_suffix(".json").read_text())
    (today,), (fast,) = data["runs"]["today"], data["runs"]["fast"]
    tree = (tmp_path / "w" / f"today_{rev[:10]}").resolve()
    assert (tree / "dlm_trl" / "sampling.py").is_file() and not (tree / "dlm_trl" / "sampling").exists()
    assert today["command"].split()[1] == str(tree / "recipes" / "gdpo_llada.py")
    assert "--rollout" not in today["command"] and "--rollout fast" in fast["command"]
    assert today["sampler_row_forwards_per_step"] == 8 * 8  # 8 rows x 8 steps
    assert fast["sampler_row_forwards_per_step"] < today["sampler_row_forwards_per_step"]
    logs = {n: (tmp_path / "w" / f"{n}_r0.log").read_text() for n in ("today", "fast")}
    assert "tokens_per_forward" in logs["fast"] and "tokens_per_forward" not in logs["today"]
    md = out.with_suffix(".md").read_text()
    assert f"`{rev[:10]}`" in md and "| fast |" in md and out.with_suffix(".png").exists()
    assert data["meta"]["today_rev"] == rev
