"""recipes/self_train_llada.py (recursive self-training) and benchmarks/self_train.py, at tiny settings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


recipe = _load("recipes/self_train_llada.py", "recipe_self_train_test")

TINY = ["--rounds", "2", "--prompts_per_round", "4", "--samples_per_prompt", "2", "--keep", "3", "--sft_steps", "2",
        "--sft_batch_size", "2", "--val_samples", "2", "--eval_samples", "2", "--torch_threads", "1",
        "--progress", "false", "--seed", "0"]


def _run(tmp_path_factory, selection: str, tag: str = "", extra: tuple = ()) -> dict:
    out = tmp_path_factory.mktemp(f"st_{selection}{tag}")
    report = recipe.main([*TINY, *extra, "--selection", selection, "--output_dir", str(out)])
    report["_dir"] = str(out)
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return {sel: _run(tmp_path_factory, sel) for sel in ("none", "random", "entropy")}


@pytest.mark.parametrize("selection", ["none", "random", "entropy"])
def test_recipe_runs_end_to_end(reports, selection):
    r = reports[selection]
    out = Path(r["_dir"])
    assert (out / "report.png").stat().st_size > 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["args"]["selection"] == selection and len(saved["rounds"]) == 2
    assert r["start"]["val_accuracy"] is not None and r["start"]["test_accuracy"] is not None
    for e in r["rounds"]:
        assert e["num_generated"] == 4 * 2
        assert e["kept"] == min(3, e["pool"]) == len(e["kept_indices"]) == len(set(e["kept_indices"]))
        assert e["kept_all_verified"] == (e["pool"] <= 3)
        assert 0.0 <= e["val_accuracy"] <= 1.0
        assert e["generated"]["n"] == 8 and e["generated"]["entropy_1"] > 0
        assert e["kept_diversity"]["n"] == e["kept"]
        if e["kept"]:
            assert len(e["sft_losses"]) == 2 and all(x >= 0 for x in e["sft_losses"])
    assert r["rounds"][0]["mem_self"]["mean_distance"] is None  # nothing fine-tuned on before round 1
    if r["rounds"][0]["kept"]:
        assert r["rounds"][1]["mem_self"]["mean_distance"] is not None
    assert r["rounds"][0]["test_accuracy"] is None  # test only at the start and after the last round
    assert r["test_final"] == r["rounds"][-1]["test_accuracy"] is not None
    # Fresh, disjoint prompts every round: round 2's samples point at rows 4..7 of the drawn prompts.
    assert all(k[1] >= 4 for k in r["rounds"][1]["kept_keys"])


@pytest.mark.parametrize("selection", ["random", "entropy"])
def test_same_seed_same_report(reports, tmp_path_factory, selection):
    again = _run(tmp_path_factory, selection, tag="_again")
    first = reports[selection]
    for a, b in zip(first["rounds"], again["rounds"], strict=True):
        assert a["kept_indices"] == b["kept_indices"] and a["kept_keys"] == b["kept_keys"]
        assert a["generated"] == b["generated"] and a["sft_losses"] == b["sft_losses"]
        assert a["val_accuracy"] == b["val_accuracy"]


def test_selection_keeps_exactly_keep_or_all():
    g = torch.Generator().manual_seed(0)
    pool = [{"ids": torch.randint(5, 50, (12,), generator=g).tolist()} for _ in range(20)]
    for method in ("none", "random", "entropy"):
        idx = recipe.select_kept(pool, 7, method, seed=3)
        assert len(idx) == 7 == len(set(idx)) and all(0 <= i < 20 for i in idx)
        assert sorted(recipe.select_kept(pool[:5], 7, method, seed=3)) == list(range(5))  # fewer: all of them
        assert recipe.select_kept(pool, 7, method, seed=3) == idx  # deterministic for a seed
    assert recipe.select_kept(pool, 7, "none", seed=3) == list(range(7))
    assert recipe.select_kept(pool, 7, "random", seed=3) != recipe.select_kept(pool, 7, "random", seed=4)


def test_sft_loss_decreases_on_a_fixed_batch():
    """A few SFT steps on four (prompt, completion) pairs lower the same-mask loss on exactly those pairs.

    The completions are the gold solutions of *other* prompts (rotated by one), so the model must move to fit
    them; the loss is measured before and after with the same diffusion times and masks (a fixed generator)."""
    from dlm_trl.masking import sft_loss
    from dlm_trl.models import load
    from dlm_trl.models.tiny.train import make_batch
    from dlm_trl.tasks import get_task

    torch.manual_seed(0)
    dlm, tok = load("tiny", dtype=torch.float32)
    rows = get_task("countdown").rows("train", 4, seed=5)
    pairs = [(rows[i]["prompt"], tok(rows[(i + 1) % 4]["reference"], add_special_tokens=False)["input_ids"])
             for i in range(4)]
    prompts, answers = recipe.sft_examples(tok, pairs, 48)
    assert all(len(a) == 48 and a[-1] == tok.eos_token_id for a in answers)
    ids, plen, att = make_batch(prompts, answers, list(range(4)), tok.pad_token_id)

    def fixed_loss() -> float:
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            t = torch.tensor([0.3, 0.5, 0.7, 0.9])
            return float(sft_loss(dlm.module, ids, plen, dlm.mask_token_id, generator=g, attention_mask=att, t=t))

    before = fixed_loss()
    losses = recipe.fine_tune(dlm.module, tok, prompts, answers, steps=8, batch_size=4, lr=1e-3, weight_decay=0.0,
                              max_grad_norm=1.0, seed=0, mask_token_id=dlm.mask_token_id)
    after = fixed_loss()
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--selection", "entrpy"], "Did you mean 'entropy'"),
        (["--selection", "best"], "choose one of ['none', 'random', 'entropy']"),
        (["--keep", "0"], "keep must be a positive integer"),
        (["--keep", "-3"], "keep must be a positive integer"),
        (["--rounds", "0"], "rounds must be a positive integer"),
        (["--task", "countdwn"], "Did you mean 'countdown'"),
        (["--learning_rate", "0"], "learning_rate must be > 0"),
    ],
)
def test_bad_flags_give_clear_errors(flags, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe.main([*flags, "--output_dir", "/nonexistent/should_not_be_written"])


def test_benchmark_tables_and_bad_selections(reports, tmp_path):
    bench = _load("benchmarks/self_train.py", "bench_self_train_test")
    runs = {k: v for k, v in reports.items()}
    md = bench.markdown(runs, "python benchmarks/self_train.py --rounds 2")
    for sel in ("none", "random", "entropy"):
        assert f"## selection = {sel}" in md
    assert md.count("\n| 2 |") == 3  # round 2 of every selection
    bench.plot(runs, tmp_path / "self_train.png")
    assert (tmp_path / "self_train.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        bench.main(["--selections", "none,best", "--docs", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--selection", "none", "--docs", str(tmp_path)])


def _reseeded(report: dict, seed: int, shift: float) -> dict:
    """A copy of ``report`` labelled with another seed and its final test accuracy shifted (table arithmetic only)."""
    r = json.loads(json.dumps({k: v for k, v in report.items() if k != "_dir"}))
    r["args"]["seed"] = seed
    r["test_final"] = r["rounds"][-1]["test_accuracy"] = r["test_final"] + shift
    return r


def test_benchmark_multi_seed_summary_and_paired_differences(reports, tmp_path):
    bench = _load("benchmarks/self_train.py", "bench_self_train_test_seeds")
    runs = {s: {sel: _reseeded(reports[sel], s, shift) for sel, shift in (("none", 0.0), ("random", 0.01 * s),
                                                                           ("entropy", 0.02 * s + 0.01))}
            for s in (0, 1, 2)}
    md = bench.markdown(runs, "python benchmarks/self_train.py --seeds 0,1,2")
    assert "seeds 0, 1, 2" in md and "mean ± sd over 3 seeds" in md
    # entropy − none per seed: +1, +3, +5 points → mean +3.00, sd 2.00, t(2) half-width 4.303·2/√3 = 4.97
    row = next(line for line in md.splitlines() if line.startswith("| entropy − none |"))
    assert "+3.00 ± 2.00 (n=3; 95 % CI [-1.97, +7.97])" in row
    row = next(line for line in md.splitlines() if line.startswith("| random − none |"))
    assert "+1.00 ± 1.00" in row
    assert md.count("<details><summary>seed ") == 9
    bench.plot(runs, tmp_path / "st.png")
    assert (tmp_path / "st.png").stat().st_size > 0


def test_benchmark_reuses_matching_runs_and_refuses_others(reports, tmp_path, capsys):
    bench = _load("benchmarks/self_train.py", "bench_self_train_test_resume")
    assert TINY[-2:] == ["--seed", "0"]
    flags = TINY[:-2]  # the benchmark takes --seeds
    out = tmp_path / "runs"
    (out / "s0" / "none").mkdir(parents=True)
    saved = {k: v for k, v in reports["none"].items() if k != "_dir"}
    (out / "s0" / "none" / "report.json").write_text(json.dumps(saved))
    runs = bench.main([*flags, "--seeds", "0", "--selections", "none", "--output_root", str(out),
                       "--docs", str(tmp_path / "docs")])
    assert "reusing" in capsys.readouterr().out and runs[0]["none"]["rounds"] == saved["rounds"]
    assert (tmp_path / "docs" / "self_train.md").exists()
    with pytest.raises(SystemExit, match="other settings \\(keep\\)"):
        keep = flags.index("--keep") + 1
        bench.main([*flags[:keep], "4", *flags[keep + 1 :], "--seeds", "0", "--selections", "none",
                    "--output_root", str(out), "--docs", str(tmp_path / "docs")])
    with pytest.raises(SystemExit):
        bench.main(["--seeds", "0,1", "--seed", "2", "--docs", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench.main(["--seeds", "a,b", "--docs", str(tmp_path)])
