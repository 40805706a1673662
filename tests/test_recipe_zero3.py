"""The evaluation protocol on two CPU processes (gloo).

* Distributed evaluation (DDP, ``torchrun``): the embedded model's per-row completions and accuracy on
  the test split equal the single-process ones; every rank makes the same number of sampler calls
  (31 rows: rank 1's shard is padded with a dummy row).
* The full GDPO recipe under DeepSpeed ZeRO-3 (``accelerate launch --config_file
  recipes/accelerate/cpu_deepspeed_2proc.yaml --zero_stage 3 recipes/gdpo_llada.py``, a tiny random
  model, 2 steps, validation every step) finishes and writes ``report.json`` with ``test_final`` /
  ``test_best`` — until the protocol was distributed it died after training (rank 0 ran the sharded
  model alone). The validation accuracies are scripted so that step 1 of 2 is the best: the restored
  best weights (gathered) are those of step 1, the final weights come back afterwards, ``best/`` holds
  the step-1 model, and the sharded evaluation's completions equal a single-process evaluation's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIG = REPO / "recipes" / "accelerate" / "cpu_deepspeed_2proc.yaml"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(out: Path, **extra: str) -> dict:
    return {
        **os.environ, "DLM_TEST_OUT": str(out), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **extra,
    }


def _run(cmd: list[str], env: dict, timeout: float = 180) -> float:
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"launch did not finish in {timeout}s (ranks hung?):\n{output.decode()[-4000:]}")
    assert proc.returncode == 0, output.decode()[-6000:]
    return time.time() - t0


# --------------------------------------------------------------------------- distributed evaluation (DDP)

EVAL_SCRIPT = textwrap.dedent(
    """
    import json, os
    import torch
    torch.set_num_threads(1)
    from accelerate import Accelerator
    import dlm_trl.evaluation as ev
    from dlm_trl.models import load

    acc = Accelerator(cpu=True)
    dlm, tok = load("tiny")
    model = acc.prepare(dlm.module)  # DistributedDataParallel over gloo
    calls = []
    real_generate = ev.generate

    def counting_generate(model, ids, **kw):
        calls.append(ids.shape[0])
        return real_generate(model, ids, **kw)

    ev.generate = counting_generate
    res = ev.evaluate("countdown", model=model, tokenizer=tok, num_samples=31, seed=0, batch_size=8,
                      progress=False, return_samples=True, accelerator=acc)
    rank = acc.process_index
    with open(os.path.join(os.environ["DLM_TEST_OUT"], f"eval_rank{rank}.json"), "w") as f:
        json.dump({"result": res, "calls": calls, "type": type(model).__name__}, f)
    acc.end_training()  # destroys the process group before interpreter shutdown
    """
)


def test_distributed_evaluation_equals_single_process(tmp_path):
    from dlm_trl.evaluation import evaluate
    from dlm_trl.models import TINY_CHECKPOINT_DIR

    if not (TINY_CHECKPOINT_DIR / "model.safetensors").exists():
        pytest.skip("embedded checkpoint missing")
    script = tmp_path / "eval.py"
    script.write_text(EVAL_SCRIPT)
    seconds = _run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script)],
                   _env(tmp_path))
    ranks = [json.loads((tmp_path / f"eval_rank{r}.json").read_text()) for r in (0, 1)]
    print(f"2-process evaluation launch: {seconds:.1f}s")
    assert ranks[0]["type"] == "DistributedDataParallel"
    assert ranks[0]["result"]["processes"] == 2
    # the same number of sampler calls of the same size on both ranks: 16 rows each (rank 1: 15 + a dummy)
    assert ranks[0]["calls"] == ranks[1]["calls"] == [8, 8]
    assert ranks[0]["result"]["samples"] == ranks[1]["result"]["samples"]  # every rank gets every row

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate("countdown", num_samples=31, seed=0, batch_size=50, progress=False, return_samples=True)
    finally:
        torch.set_num_threads(n)
    dist = ranks[0]["result"]
    assert [s["completion"] for s in dist["samples"]] == [s["completion"] for s in single["samples"]]
    assert dist["accuracy"] == single["accuracy"] and dist["num_samples"] == 31
    assert 0 < single["accuracy"] < 1  # the embedded model solves some of them: the comparison means something


# --------------------------------------------------------------------------- the GDPO recipe under ZeRO-3

RECIPE_SCRIPT = textwrap.dedent(
    """
    import hashlib, importlib.util, json, os, sys
    import deepspeed
    import torch
    from dlm_trl.trainers import recipe_utils as ru

    out = os.environ["DLM_TEST_OUT"]
    rec = {"evals": [], "digests": {}, "restores": [], "partitioned": None}


    def varied_reward(prompts, completions, **kwargs):  # --reward_funcs __main__:varied_reward
        # varies between completions, so the random model's groups are not flat and every step moves it
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(sum(map(ord, t)) % 5) / 4.0 for t in texts]


    def digest(params):  # every rank; the gathered (whole) parameters
        with deepspeed.zero.GatheredParameters(params):
            h = hashlib.sha256()
            for p in params:
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            return h.hexdigest()

    real_evaluate = ru.evaluate

    def recording_evaluate(*a, **k):
        res = real_evaluate(*a, **dict(k, return_samples=True))
        rec["evals"].append({"split": res["split"], "completions": [s["completion"] for s in res["samples"]]})
        return res

    ru.evaluate = recording_evaluate
    SCRIPTED = {0: 0.2, 1: 0.6, 2: 0.4}  # validation accuracy per step: step 1 is the best
    real_protocol_evaluate = ru.RecipeProtocol.evaluate

    def scripted_evaluate(self, split, n):
        res = real_protocol_evaluate(self, split, n)
        if split == "validation":
            step = self.trainer.state.global_step
            params = [p for p in self._model().parameters() if p.requires_grad]
            if rec["partitioned"] is None:
                rec["partitioned"] = sum(int(p.ds_tensor.numel() < p.ds_numel) for p in params)
            rec["digests"][step] = digest(params)
            res = dict(res, accuracy=SCRIPTED[step])
        return res

    ru.RecipeProtocol.evaluate = scripted_evaluate
    real_restore = ru.ParameterSnapshot.restore

    def recording_restore(self):
        real_restore(self)
        rec["restores"].append(digest([p for p, _, _ in self._saved]))

    ru.ParameterSnapshot.restore = recording_restore

    spec = importlib.util.spec_from_file_location("recipe", os.path.join(os.getcwd(), "recipes", "gdpo_llada.py"))
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    report = recipe.main(sys.argv[1:])
    rec["report_keys"] = sorted(report)
    with open(os.path.join(out, f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(rec, f)
    """
)


def test_gdpo_recipe_under_zero3_two_processes(tmp_path, random_model_dir):
    out = tmp_path / "gdpo_z3"
    script = tmp_path / "run_recipe.py"
    script.write_text(RECIPE_SCRIPT)
    args = [
        "--model_name_or_path", str(random_model_dir), "--output_dir", str(out), "--max_steps", "2",
        "--eval_every_steps", "1", "--num_train_prompts", "8", "--eval_samples", "5", "--val_samples", "5",
        "--eval_batch_size", "4", "--per_device_train_batch_size", "2", "--num_generations", "2",
        "--gradient_accumulation_steps", "1", "--gen_length", "8", "--block_length", "8", "--diffusion_steps", "4",
        "--learning_rate", "1e-2", "--disable_tqdm", "true", "--torch_threads", "1",
        "--reward_funcs", "__main__:varied_reward",
    ]
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ACCELERATE_CONFIG), "--zero_stage", "3",
           "--main_process_port", str(_free_port()), str(script), *args]
    seconds = _run(cmd, _env(tmp_path))
    print(f"ZeRO-3 recipe launch: {seconds:.1f}s")
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["max_steps"] == 2 and report["time_cap_hit"] is False
    assert [p["step"] for p in report["validation_curve"]] == [0, 1, 2]
    assert [p["accuracy"] for p in report["validation_curve"]] == [0.2, 0.6, 0.4]
    assert report["best_step"] == 1 and report["best_validation_accuracy"] == 0.6
    for key in ("before", "test_final", "test_best"):
        assert report[key]["split"] == "test" and report[key]["num_samples"] == 5, key
    assert (out / "report.png").stat().st_size > 1000
    # consolidated model folders (not DeepSpeed checkpoints): the final model and the best one
    assert (out / "model.safetensors").exists() and (out / "best" / "model.safetensors").exists()

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rec in ranks:
        assert rec["partitioned"] > 0  # the parameters really are sharded
        assert set(rec["report_keys"]) >= {"before", "test_final", "test_best", "best_step", "validation_curve"}
        d = rec["digests"]
        assert d["0"] != d["1"] != d["2"]  # lr 1e-2: every step changes the weights
        # finish(): the best (step 1) restored on every rank from its own shards, then the final weights back
        assert rec["restores"] == [d["1"], d["2"]]
        # test evaluations: before, final, best (re-evaluated: step 1 is neither the start nor the end)
        assert [e["split"] for e in rec["evals"]].count("test") == 3
    assert ranks[0]["digests"] == ranks[1]["digests"] and ranks[0]["evals"] == ranks[1]["evals"]

    # best/ holds the step-1 weights: digest of its tensors in the model's parameter order
    import hashlib

    from safetensors.torch import load_file

    from dlm_trl.models import TinyDLMForMaskedDiffusion

    model = TinyDLMForMaskedDiffusion.from_pretrained(out / "best")
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    assert h.hexdigest() == ranks[0]["digests"]["1"]
    assert load_file(out / "model.safetensors").keys() == load_file(out / "best" / "model.safetensors").keys()

    # the sharded "before" evaluation gives the completions of a single-process evaluation of the same model
    from dlm_trl.evaluation import evaluate
    from dlm_trl.models import load

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dlm, tok = load(str(random_model_dir))
        single = evaluate("countdown", model=dlm, tokenizer=tok, num_samples=5, seed=0, gen_length=8, block_length=8,
                          steps=4, progress=False, return_samples=True)
    finally:
        torch.set_num_threads(n)
    assert ranks[0]["evals"][0]["split"] == "test"
    assert ranks[0]["evals"][0]["completions"] == [s["completion"] for s in single["samples"]]
