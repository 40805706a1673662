"""benchmarks/recipe_runs.py: runs each recipe as a user would and tabulates report.json files."""

from __future__ import annotations

import importlib.util
import json
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
after = {"diffu_grpo": 0.40, "gdpo": 0.38, "dmpo": 0.36}[algo] + 0.01 * seed
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps({
    "title": f"{algo} · tiny · countdown", "steps": 10, "train_seconds": 100.0,
    "seconds": {"sampler": 60.0, "nograd_likelihoods": 10.0, "rollout_other": 5.0},
    "heldout_before": {"accuracy": 0.35, "num_samples": 400},
    "heldout_after": {"accuracy": after, "num_samples": 400},
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
    assert "| diffu-GRPO | 0,1 | 35.0 ± 0.0 → **40.5 ± 0.7** | +5.00, +6.00 | +5.50 | 10.0 | 10.0 | 60 / 10 / 5 / 25 % |" in table
    assert "| GDPO | 0,1 |" in table and "| DMPO | 0,1 |" in table
    runs = json.loads(docs.with_suffix(".json").read_text())
    assert len(runs) == 6 and all(r["returncode"] == 0 and r["peak_rss_mb"] > 0 for r in runs)
    assert docs.with_suffix(".png").stat().st_size > 1000
    # finished runs are not repeated: a failing launcher is never called
    recipe_runs.main([*argv[:-1], f"{sys.executable} {fake} boom"])
    # a failing run stops the sweep with the log to read
    with pytest.raises(SystemExit, match="failed"):
        recipe_runs.main([*argv[:-1], f"{sys.executable} {fake} boom", "--rerun"])


def test_recipe_runs_rejects_unknown_recipe(tmp_path):
    with pytest.raises(SystemExit, match="unknown recipe"):
        load("recipe_runs").main(["--recipes", "gdpo,grpo", "--out_dir", str(tmp_path)])
