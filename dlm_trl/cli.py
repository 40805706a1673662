"""The ``dlm-trl`` command line.

``dlm-trl eval``     generate with the DLM sampler on a task and verify the answers;
``dlm-trl plugins``  list installed likelihood estimators and reward functions;
``dlm-trl tasks``    list the built-in tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_kwargs(args: argparse.Namespace) -> dict:
    """The model-loading flags of ``dlm-trl eval`` as keyword arguments of :func:`dlm_trl.models.load`."""
    kwargs = {
        "family": args.model_family,
        "mask_token_id": args.mask_token_id,
        "trust_remote_code": True if args.trust_remote_code else None,
        "remote_code": args.remote_code,
    }
    if args.torch_dtype:
        kwargs["dtype"] = args.torch_dtype
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    return kwargs


def _dataset(args: argparse.Namespace):
    """The ``--dataset*`` flags of ``dlm-trl eval`` as a :class:`dlm_trl.tasks.DataSource` (None: the defaults)."""
    from .tasks import DataSource

    return DataSource.from_options(args.dataset, args.dataset_config, args.dataset_split, args.dataset_columns,
                                   for_split=args.split)


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_lengths, format_table
    from .sampling import keep_freed_memory

    keep_freed_memory()

    load_kwargs = _load_kwargs(args)
    if args.adapter:
        from .models import load_with_adapter

        model, tok = load_with_adapter(args.model, args.adapter, device=args.device, **load_kwargs)
        kwargs = {"model": model, "tokenizer": tok, "model_name_or_path": f"{args.model}+{args.adapter}"}
    else:
        kwargs = {"model_name_or_path": args.model, "device": args.device, "load_kwargs": load_kwargs}
    out = evaluate_lengths(
        args.task,
        args.gen_length,
        protocol=args.protocol,
        num_samples=args.num_samples,
        seed=args.seed,
        split=args.split,
        block_length=args.block_length,
        steps=args.steps,
        temperature=args.temperature,
        remasking=args.remasking,
        schedule=args.schedule,
        cfg_scale=args.cfg_scale,
        guidance_schedule=args.guidance_schedule,
        guidance_late_fraction=args.guidance_late_fraction,
        guidance_rate_preserving=args.rate_preserving,
        rollout=args.rollout,
        transfer=args.transfer,
        threshold=args.threshold,
        cache=args.cache,
        cache_refresh=args.cache_refresh,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        return_samples=args.samples,
        data_path=args.data_dir,
        dataset=_dataset(args),
        **kwargs,
    )
    if len(out["results"]) == 1:  # one length: the single-result table and JSON layout
        res = out["results"][0]
        print(format_table([res]))
    else:  # a row per length, their average, and all of it in the JSON
        res = out
        print(format_table(out["results"], average=out["average"]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from .registry import ESTIMATORS, REWARDS, available, describe

    for group in (ESTIMATORS, REWARDS):
        names = available(group)
        print(f"{group}: {'' if names else 'none'}")
        width = max((len(n) for n in names), default=0)
        for name in names:
            print(f"  {name:<{width}}  {describe(group, name)}")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .tasks import DEFAULT_TASK, TASKS

    for name, t in TASKS.items():
        star = " (default)" if name == DEFAULT_TASK else ""
        print(f"{name}{star}: {t.description}; reward={t.reward}, gen_length={t.gen_length}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlm-trl", description="RL fine-tuning of diffusion language models on TRL")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--traceback", action="store_true", help="print the full Python traceback on errors")

    ev = sub.add_parser("eval", parents=[common], help="evaluate a model on a task (generate + verify)")
    ev.add_argument("--model", default="tiny", help="'tiny' (embedded), a local checkpoint dir, or a hub id")
    ev.add_argument("--adapter", default=None, help="a PEFT adapter directory to load on top of --model")
    ev.add_argument("--task", default="countdown", help="countdown (default), sudoku, gsm8k, math, humaneval or mbpp")
    ev.add_argument("--num-samples", type=int, default=200)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--split", default="test", choices=["train", "validation", "test"],
        help="test (default; report this), validation (choose on this) or train (dlm_trl.tasks.splits)",
    )
    ev.add_argument(
        "--gen-length", default=None,
        help="completion tokens, or a comma list (e.g. 128,256,512): one row per length and their average "
        "(default: the --protocol's lengths, else the task's)",
    )
    ev.add_argument(
        "--protocol", default=None, choices=["d1"],
        help="the papers' evaluation protocol: d1 = lengths 128,256,512, block 32, steps = length/2, temperature 0 "
        "(--gen-length/--block-length/--steps/--temperature override it)",
    )
    ev.add_argument("--block-length", type=int, default=None, help="default: the protocol's, else the task's")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (default gen_length/2, as d1)")
    ev.add_argument("--temperature", type=float, default=None, help="default 0 (greedy)")
    ev.add_argument(
        "--remasking", default=None,
        help="which masked positions to commit first: low_confidence, random, margin, entropy, origin "
        "(default: the model family's; LLaDA low_confidence)",
    )
    ev.add_argument(
        "--schedule", default=None,
        help="tokens committed per step: even (LLaDA) or dream_linspace (Dream); default: the model family's",
    )
    ev.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale (0 = off)")
    ev.add_argument(
        "--guidance-schedule", default="constant",
        help="when to guide (with --cfg-scale > 0): constant (every step; default), linear (scale x the unmasked "
        "fraction of the completion) or late (only once at most --guidance-late-fraction of it is masked)",
    )
    ev.add_argument(
        "--guidance-late-fraction", type=float, default=0.5,
        help="the late schedule guides once at most this fraction of the completion is masked (default 0.5)",
    )
    ev.add_argument(
        "--rate-preserving", action="store_true",
        help="rate-preserving guidance (arXiv 2507.08965): choose which and how many tokens to unmask from the "
        "unguided logits, draw the tokens from the guided ones",
    )
    # The decoder (dlm_trl.sampling: transfer rules and key/value caches).
    ev.add_argument(
        "--rollout", default=None, choices=["plain", "fast"],
        help="a decoder preset: plain (every row --steps forwards) or fast (the recommended parallel decoder, "
        "docs/rollout_speed.md); --transfer/--threshold/--cache override it",
    )
    ev.add_argument(
        "--transfer", default=None, choices=["topk", "threshold", "factor"],
        help="tokens committed per step: topk (the schedule's count; default), threshold (every token with "
        "confidence >= --threshold, at least one) or factor (Fast-dLLM's factor rule)",
    )
    ev.add_argument("--threshold", type=float, default=None, help="confidence threshold of --transfer threshold (0.9)")
    ev.add_argument(
        "--cache", default=None, choices=["none", "prefix", "dual"],
        help="key/value cache (native LLaDA/Dream and the embedded model): none (default), prefix or dual",
    )
    ev.add_argument("--cache-refresh", type=int, default=None, help="rebuild the cache every N steps of a block")
    ev.add_argument("--batch-size", type=int, default=50)
    ev.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the model loads)")
    ev.add_argument(
        "--model-family", default=None, choices=["llada", "dream", "bidirectional"],
        help="diffusion-LM family (default: read from the checkpoint's config.json)",
    )
    ev.add_argument("--mask-token-id", type=int, default=None, help="mask token id (default: config / tokenizer)")
    ev.add_argument(
        "--trust-remote-code", action="store_true",
        help="allow code shipped with the checkpoint (Dream's tokenizer, models dlm-trl has no native class for)",
    )
    ev.add_argument(
        "--remote-code", action="store_true",
        help="run the checkpoint's own modeling code instead of dlm-trl's native LLaDA/Dream implementation",
    )
    ev.add_argument(
        "--torch-dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"],
        help="weights dtype (default: float32 for the tiny model, the checkpoint's otherwise)",
    )
    ev.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager (transformers' attn_implementation)")
    ev.add_argument("--data-dir", default=None, help="folder holding gsm8k/ or math/ (default ../shared/data)")
    # The data of a file task (gsm8k, math, humaneval, mbpp): dlm_trl.tasks.sources.
    ev.add_argument(
        "--dataset", default=None,
        help="a Hugging Face dataset name (e.g. openai/gsm8k) or a local .jsonl/.json/.parquet file or folder "
        "(default: --data-dir, else ../shared/data, else the small fixture shipped in dlm_trl/tasks/data)",
    )
    ev.add_argument("--dataset-config", default=None, help="the dataset's configuration (e.g. main for openai/gsm8k)")
    ev.add_argument(
        "--dataset-split", default=None,
        help="the dataset split to read (default: test for --split test, train for train/validation)",
    )
    ev.add_argument(
        "--dataset-columns", default=None,
        help="task columns from differently named dataset columns: TASK=DATASET,... (e.g. text=prompt)",
    )
    ev.add_argument("--output", default=None, help="write the results as JSON here")
    ev.add_argument("--samples", action="store_true", help="include every completion in the JSON")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_eval)

    pl = sub.add_parser("plugins", parents=[common], help="list installed estimators and rewards")
    pl.set_defaults(func=_plugins)
    tk = sub.add_parser("tasks", parents=[common], help="list built-in tasks")
    tk.set_defaults(func=_tasks)
    return parser


#: Exceptions that are the user's to fix: printed as one line, no traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, KeyError, ImportError, OSError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("dlm-trl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 — one readable line; --traceback for the rest
        if args.traceback:
            raise
        msg = str(err).strip() or type(err).__name__
        if isinstance(err, _USER_ERRORS):
            print(f"dlm-trl: error: {msg}", file=sys.stderr)
            return 2
        print(f"dlm-trl: error ({type(err).__name__}): {msg}\n(run again with --traceback for the full trace)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
