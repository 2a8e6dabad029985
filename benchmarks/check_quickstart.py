"""Fails unless a workdir's evaluation reached --min_top1 on the whole test split. Used by CI
after the quickstart run:

  python benchmarks/check_quickstart.py workdirs/quickstart --min_top1=0.75

Which evaluation it reads, first found wins:
1. DIR/eval_report_<step>.json, the `--mode=eval` report of the latest checkpoint in
   DIR/checkpoints/ (alexnet_jax/report.py);
2. DIR/eval_report.json, when no per-step report exists at all (reports written before they
   were named by step);
3. DIR/metrics.jsonl: the evaluation of the latest checkpoint's step if there is one, else the
   last evaluation recorded (training alone, e.g. CI's quickstart run, writes no report).

Prints one JSON line with the numbers and where they came from; on failure, one line on stderr
and exit status 1. Standard library only (no jax import), so it answers in milliseconds.
"""

import argparse
import json
import pathlib
import sys

LATEST_REPORT_FILE = "eval_report.json"  # alexnet_jax/checkpoint/layout.py's names
REPORT_PREFIX = "eval_report_"


class CheckError(Exception):
  """A failed check: its message is the one line printed."""


def latest_checkpoint_step(workdir: pathlib.Path) -> int | None:
  """The largest step saved in DIR/checkpoints/<step>/ (Orbax's temporary folders ignored)."""
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] \
      if folder.is_dir() else []
  return max(steps) if steps else None


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as error:
    raise CheckError(f"cannot read {path}: {error}") from None


def _from_report(path: pathlib.Path) -> dict:
  report = _read_json(path)
  try:
    view = report["views"]["center_crop"]
    return {"source": str(path), "step": report["step"], "eval/top1": view["top1"],
            "eval/top5": view["top5"], "eval/num_examples": view["num_examples"]}
  except (KeyError, TypeError):
    raise CheckError(f"{path} is not an evaluation report (no views.center_crop with "
                     "top1, top5, num_examples)") from None


def _from_metrics(path: pathlib.Path, step: int | None) -> dict:
  if not path.is_file():
    raise CheckError(f"no evaluation found: {path.parent} has no eval_report*.json and no "
                     "metrics.jsonl; point at the --workdir of a finished training run")
  records = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError:
        raise CheckError(f"{path}:{number} is not a JSON line") from None
  evals = [r for r in records if "eval/top1" in r]
  if not evals:
    raise CheckError(f"no evaluation in {path} (no eval/top1 record): did the run reach its "
                     "final evaluation (config.eval_at_end)?")
  at_step = [r for r in evals if r.get("eval/checkpoint_step", r.get("step")) == step]
  last = (at_step or evals)[-1]
  return {"source": str(path), "step": last.get("eval/checkpoint_step", last.get("step")),
          **{k: last.get(k) for k in ("eval/top1", "eval/top5", "eval/num_examples")}}


def find_evaluation(workdir: pathlib.Path) -> dict:
  """{'source', 'step', 'eval/top1', 'eval/top5', 'eval/num_examples'} of the evaluation to
  check (module docstring); CheckError when there is none."""
  if not workdir.is_dir():
    raise CheckError(f"{workdir} is not a directory: give the --workdir of a training run")
  step = latest_checkpoint_step(workdir)
  if step is not None and (workdir / f"{REPORT_PREFIX}{step}.json").is_file():
    return _from_report(workdir / f"{REPORT_PREFIX}{step}.json")
  per_step = list(workdir.glob(f"{REPORT_PREFIX}*.json"))
  if not per_step and (workdir / LATEST_REPORT_FILE).is_file():
    return _from_report(workdir / LATEST_REPORT_FILE)
  return _from_metrics(workdir / "metrics.jsonl", step)


def check(found: dict, min_top1: float, num_examples: int) -> None:
  """CheckError (one line) when the evaluation `found` falls short."""
  where = f"step {found['step']}, from {found['source']}"
  if found["eval/num_examples"] != num_examples:
    raise CheckError(f"evaluated {found['eval/num_examples']} examples, expected "
                     f"{num_examples} ({where})")
  top1 = found["eval/top1"]
  if not isinstance(top1, (int, float)) or top1 < min_top1:
    shown = f"{top1:.4f}" if isinstance(top1, (int, float)) else repr(top1)
    raise CheckError(f"eval/top1 {shown} < --min_top1={min_top1} ({where})")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--min_top1", type=float, required=True)
  parser.add_argument("--num_examples", type=int, default=10000)
  args = parser.parse_args()
  try:
    found = find_evaluation(args.workdir)
    print(json.dumps(found))
    check(found, args.min_top1, args.num_examples)
  except CheckError as error:
    print(f"check_quickstart: FAILED: {error}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
