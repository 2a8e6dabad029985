"""Reads a workdir's metrics.jsonl and fails unless the last eval reached --min_top1
on the whole test split. Used by CI after the quickstart run."""

import argparse
import json
import pathlib
import sys


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--min_top1", type=float, required=True)
  parser.add_argument("--num_examples", type=int, default=10000)
  args = parser.parse_args()
  records = [json.loads(line) for line in (args.workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if "eval/top1" in r]
  if not evals:
    print(f"no evaluation in {args.workdir / 'metrics.jsonl'}", file=sys.stderr)
    return 1
  last = evals[-1]
  print(json.dumps({k: last[k] for k in ("step", "eval/top1", "eval/top5", "eval/num_examples")}))
  if last["eval/num_examples"] != args.num_examples:
    print(f"evaluated {last['eval/num_examples']} examples, expected {args.num_examples}",
          file=sys.stderr)
    return 1
  if last["eval/top1"] < args.min_top1:
    print(f"eval/top1 {last['eval/top1']:.4f} < {args.min_top1}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
