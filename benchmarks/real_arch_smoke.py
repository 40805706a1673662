"""Real architectures on this machine: tiny random LLaDA and Dream checkpoints in hub layout,
run through ``dlm-trl eval`` and one optimizer step of each recipe, natively and with the
checkpoints' own (remote) code, offline.

    python benchmarks/real_arch_smoke.py                      # full matrix, table to stdout
    python benchmarks/real_arch_smoke.py --families llada --recipes gdpo --impls native

The checkpoints are written by the upstream modeling code (``../shared/reference``, patched for
transformers 5; see ``dlm_trl/testing/hub_checkpoints.py``), so the native classes read weights
exactly as the hub serves them. A third "implementation", ``remote-unpatched``, keeps the hub's files
byte-for-byte: it shows the error a user meets, and that dlm-trl names the cause and the fix.

Prints a markdown table (family, implementation, what ran, outcome, seconds) and writes it as
JSON with ``--output``. Exit status 1 if a case that should work failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = ("gdpo", "diffu_grpo", "dmpo")
IMPLS = ("native", "remote", "remote-unpatched")


def build_checkpoints(workdir: Path, families: list[str]) -> dict[tuple[str, str], Path]:
    """``{(family, "patched" | "unpatched"): checkpoint dir}``."""
    from dlm_trl.testing.hub_checkpoints import build_remote_code_checkpoint

    out = {}
    for fam in families:
        out[(fam, "patched")] = build_remote_code_checkpoint(fam, workdir / f"{fam}-hub", seed=0)
        out[(fam, "unpatched")] = build_remote_code_checkpoint(fam, workdir / f"{fam}-hub-unpatched", seed=0,
                                                               patched=False)
    return out


def run_eval(path: Path, impl: str, num_samples: int) -> dict:
    """``dlm-trl eval`` on Countdown, as a user runs it: a new process (transformers caches remote code per
    process, so the unpatched hub files must be the first such code it imports). Returns ok / accuracy / error."""
    import subprocess

    out_json = path.parent / f"eval-{path.name}-{impl}.json"
    argv = [sys.executable, "-m", "dlm_trl.cli", "eval", "--model", str(path), "--task", "countdown",
            "--num-samples", str(num_samples), "--batch-size", str(num_samples), "--gen-length", "16",
            "--block-length", "8", "--no-progress", "--output", str(out_json)]
    if impl != "native":
        argv.append("--remote-code")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        errors = [line for line in res.stderr.splitlines() if line.startswith("dlm-trl: error")]
        return {"ok": False, "rc": res.returncode, "error": errors[-1] if errors else res.stderr[-300:]}
    out = json.loads(out_json.read_text())
    return {"ok": True, "rc": 0, "accuracy": out["accuracy"], "remasking": out["sampler"]["remasking"],
            "schedule": out["sampler"]["schedule"]}


def run_recipe(path: Path, recipe: str, impl: str, out_dir: Path) -> dict:
    """One optimizer step of ``recipes/<recipe>_llada.py`` on the checkpoint (in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{recipe}", ROOT / "recipes" / f"{recipe}_llada.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = [
        "--model_name_or_path", str(path), "--output_dir", str(out_dir), "--max_steps", "1",
        "--num_train_prompts", "8", "--eval_samples", "4", "--eval_batch_size", "4",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
        "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "8", "--disable_tqdm", "true",
        "--torch_threads", "0", "--train_minutes", "5", "--val_samples", "4", "--eval_every_steps", "1",
    ]
    if impl != "native":
        argv += ["--remote_code", "true"]
    report = module.main(argv)
    return {"ok": report.get("steps") == 1, "steps": report.get("steps"),
            "test_final": (report.get("test_final") or {}).get("accuracy")}


def run_matrix(workdir: Path, families, impls, recipes, num_samples: int = 4) -> list[dict]:
    ckpts = build_checkpoints(workdir, families)
    rows = []
    for fam in families:
        for impl in impls:
            path = ckpts[(fam, "unpatched" if impl == "remote-unpatched" else "patched")]
            t0 = time.time()
            res = run_eval(path, impl, num_samples)
            rows.append({"family": fam, "impl": impl, "what": "dlm-trl eval", **res,
                         "seconds": round(time.time() - t0, 2)})
            if impl == "remote-unpatched":
                continue  # it cannot load; the eval row shows the error a user gets
            for recipe in recipes:
                t0 = time.time()
                try:
                    res = run_recipe(path, recipe, impl, workdir / f"run-{fam}-{impl}-{recipe}")
                except Exception as err:  # noqa: BLE001 — a benchmark row, not a crash
                    res = {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                rows.append({"family": fam, "impl": impl, "what": f"recipes/{recipe}_llada.py, 1 step", **res,
                             "seconds": round(time.time() - t0, 2)})
    return rows


def expected_ok(row: dict) -> bool:
    """Everything works except the hub's unmodified code under transformers 5 (4.x runs it as it is)."""
    from dlm_trl.testing.hub_checkpoints import needs_transformers5_patch

    return row["impl"] != "remote-unpatched" or not needs_transformers5_patch()


def format_rows(rows: list[dict]) -> str:
    lines = ["| family | implementation | what | outcome | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        if r["ok"]:
            outcome = "ok" + (f" (accuracy {100 * r['accuracy']:.0f} %, {r['remasking']}, {r['schedule']})"
                              if "accuracy" in r else "")
        else:
            outcome = f"fails: {r.get('error', '')}"
        lines.append(f"| {r['family']} | {r['impl']} | {r['what']} | {outcome} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["llada", "dream"], choices=["llada", "dream"])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="keep the checkpoints and runs here (default: a temp dir)")
    ap.add_argument("--output", default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)

    from dlm_trl.testing.hub_checkpoints import REFERENCE_MISSING, reference_dir

    if reference_dir() is None:
        print(f"real_arch_smoke: {REFERENCE_MISSING}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = run_matrix(workdir, args.families, args.impls, args.recipes, args.num_samples)
    print(format_rows(rows))
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    bad = [r for r in rows if r["ok"] != expected_ok(r)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
