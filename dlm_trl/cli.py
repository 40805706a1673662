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


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_table

    if args.adapter:
        from .models import load_with_adapter

        model, tok = load_with_adapter(args.model, args.adapter, device=args.device)
        kwargs = {"model": model, "tokenizer": tok, "model_name_or_path": f"{args.model}+{args.adapter}"}
    else:
        kwargs = {"model_name_or_path": args.model, "device": args.device}
    res = evaluate(
        args.task,
        num_samples=args.num_samples,
        seed=args.seed,
        split=args.split,
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        temperature=args.temperature,
        remasking=args.remasking,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        return_samples=args.samples,
        data_path=args.data_dir,
        **kwargs,
    )
    print(format_table([res]))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from .registry import ESTIMATORS, REWARDS, available

    for group in (ESTIMATORS, REWARDS):
        print(f"{group}: {', '.join(available(group)) or 'none'}")
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

    ev = sub.add_parser("eval", help="evaluate a model on a task (generate + verify)")
    ev.add_argument("--model", default="tiny", help="'tiny' (embedded), a local checkpoint dir, or a hub id")
    ev.add_argument("--adapter", default=None, help="a PEFT adapter directory to load on top of --model")
    ev.add_argument("--task", default="countdown", help="countdown (default), sudoku, gsm8k or math")
    ev.add_argument("--num-samples", type=int, default=200)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--split", default="test", choices=["train", "test"])
    ev.add_argument("--gen-length", type=int, default=None, help="completion tokens (default: the task's)")
    ev.add_argument("--block-length", type=int, default=None, help="default: the task's (32 for real models)")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (default gen_length/2, as d1)")
    ev.add_argument("--temperature", type=float, default=0.0)
    ev.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    ev.add_argument("--batch-size", type=int, default=50)
    ev.add_argument("--device", default=None, help="e.g. cuda, cpu (default: where the model loads)")
    ev.add_argument("--data-dir", default=None, help="folder holding gsm8k/ or math/ (default ../shared/data)")
    ev.add_argument("--output", default=None, help="write the results as JSON here")
    ev.add_argument("--samples", action="store_true", help="include every completion in the JSON")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_eval)

    pl = sub.add_parser("plugins", help="list installed estimators and rewards")
    pl.set_defaults(func=_plugins)
    tk = sub.add_parser("tasks", help="list built-in tasks")
    tk.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"dlm-trl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
