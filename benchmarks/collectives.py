"""Which collectives the compiled train step contains, and what one device holds.

  python benchmarks/collectives.py                       # 8 simulated CPU devices, paper, batch 128
  python benchmarks/collectives.py --batch=256 --layouts=1,2,2+fsdp
  python benchmarks/collectives.py --variant=alexnet_bn

For each layout (`parallel.model` = 1 or 2, with or without `parallel.fsdp`) it builds the
trainer's own jitted step (experiment.build), compiles it for abstract inputs (nothing is run)
and prints one JSON line:
- `collectives`: per kind (all-reduce, all-gather, reduce-scatter, collective-permute,
  all-to-all) the number of ops in `compiled.as_text()`, the bytes of their results on one
  device, and the same split by the mesh axis they run over (`data`, `model`, or `all`
  devices), read from each op's replica groups;
- `param_bytes_per_device`, `opt_state_bytes_per_device`, `batch_stats_bytes_per_device`:
  the sum over leaves of the shard a device holds (device 0);
- `xla_memory`: XLA's own memory analysis of the compiled step for one device (arguments,
  outputs, temporaries, donated aliases), i.e. what the layout costs in activations and
  gathered weights too.

On a machine without accelerators it simulates 8 CPU devices (set XLA_FLAGS yourself for
another count). Results of one run: benchmarks/results/collectives_cpu.jsonl, docs/parallel.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

from absl import app, flags  # noqa: E402

_BATCH = flags.DEFINE_integer("batch", 128, "Global batch size.")
_VARIANT = flags.DEFINE_string("variant", "paper", "model.variant (paper or alexnet_bn for model=2).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 227, "model.image_size.")
_OPTIMIZER = flags.DEFINE_string("optimizer", "sgd", "optimizer.name.")
_LAYOUTS = flags.DEFINE_list("layouts", ["1", "1+fsdp", "2", "2+fsdp"],
                             "parallel.model, optionally +fsdp.")
_DUMP = flags.DEFINE_string("dump_hlo", None, "Write each compiled HLO text into this folder.")

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"=\s*(?P<type>.*?)\s(?P<kind>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}
_IOTA_GROUPS = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}")
_PAIRS = re.compile(r"source_target_pairs=\{")


def _dtype_bytes(dtype: str) -> int:
  if dtype in _BYTES:
    return _BYTES[dtype]
  return max(1, int(dtype[1:]) // 8)


def _result_bytes(type_text: str, is_start: bool) -> int:
  shapes = _SHAPE.findall(type_text)
  if is_start and len(shapes) > 1:  # async start: (operands..., results...) -> the result
    shapes = shapes[len(shapes) // 2:]
  total = 0
  for dtype, dims in shapes:
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    total += count * _dtype_bytes(dtype)
  return total


def _group_size(line: str) -> int | None:
  match = _IOTA_GROUPS.search(line)
  if match:
    return int(match.group(2))
  match = _LIST_GROUPS.search(line)
  if match:
    return len([d for d in match.group(1).split(",") if d])
  match = _MESH_GROUPS.search(line)
  if match:  # mesh['axis_0'=4,'axis_1'=2] {'axis_1'}: groups span the listed axes
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", match.group(1)))
    size = 1
    for name in re.findall(r"'(\w+)'", match.group(2)):
      size *= int(sizes[name])
    return size
  return None


def count_collectives(hlo_text: str, axis_sizes: dict[str, int]) -> dict:
  """{kind: {'count', 'bytes', 'by_axis': {axis: {'count', 'bytes'}}}} over the HLO text."""
  total_devices = 1
  for size in axis_sizes.values():
    total_devices *= size
  names_by_size = {}
  for name, size in axis_sizes.items():
    names_by_size.setdefault(size, name)  # ('data', 'model') never share a size here
  names_by_size.setdefault(total_devices, "all")
  out = {kind: {"count": 0, "bytes": 0, "by_axis": {}} for kind in KINDS}
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    kind, is_start = match.group("kind"), bool(match.group("start"))
    nbytes = _result_bytes(match.group("type"), is_start)
    size = _group_size(line)
    axis = names_by_size.get(size, f"groups of {size}") if size else (
        "pairs" if _PAIRS.search(line) else "unknown")
    entry = out[kind]
    entry["count"] += 1
    entry["bytes"] += nbytes
    per_axis = entry["by_axis"].setdefault(axis, {"count": 0, "bytes": 0})
    per_axis["count"] += 1
    per_axis["bytes"] += nbytes
  return out


def layout_config(layout: str):
  from configs import synthetic

  config = synthetic.get_config()
  model, _, extra = layout.partition("+")
  config.parallel.model = int(model)
  config.parallel.fsdp = extra == "fsdp"
  config.batch_size = config.eval_batch_size = _BATCH.value
  config.model.variant = _VARIANT.value
  config.model.image_size = _IMAGE_SIZE.value
  config.model.init = "caffe" if _VARIANT.value == "alexnet_bn" else "paper"
  config.optimizer.name = _OPTIMIZER.value
  config.data.num_train_examples = config.data.num_eval_examples = _BATCH.value
  return config


def measure(layout: str) -> dict:
  import jax
  import jax.numpy as jnp

  from alexnet_jax import checkpoint as ckpt_lib, experiment, sharding

  config = layout_config(layout)
  exp = experiment.build(config)
  size, channels = config.model.image_size, config.model.in_channels
  batch_sharding = sharding.batch_sharding(exp.mesh)
  batch = {
      "image": jax.ShapeDtypeStruct((config.batch_size, size, size, channels), jnp.uint8,
                                    sharding=batch_sharding),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding),
  }
  state = ckpt_lib.abstract_like(exp.abstract_state, exp.state_shardings)
  start = time.perf_counter()
  compiled = exp.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  text = compiled.as_text()
  if _DUMP.value:
    os.makedirs(_DUMP.value, exist_ok=True)
    with open(os.path.join(_DUMP.value, f"train_step_{layout}.hlo.txt"), "w") as f:
      f.write(text)
  axis_sizes = dict(zip(exp.mesh.axis_names, exp.mesh.devices.shape))
  shard = lambda key: sharding.shard_bytes(exp.abstract_state[key], exp.state_shardings[key])
  result = {
      "layout": layout, "parallel.model": config.parallel.model,
      "parallel.fsdp": bool(config.parallel.fsdp), "mesh": axis_sizes,
      "devices": jax.device_count(), "device": jax.devices()[0].device_kind,
      "variant": config.model.variant, "batch": config.batch_size, "image_size": size,
      "optimizer": config.optimizer.name,
      "param_bytes_per_device": shard("params"),
      "opt_state_bytes_per_device": shard("opt_state"),
      "batch_stats_bytes_per_device": shard("batch_stats"),
      "collectives": count_collectives(text, axis_sizes),
      "compile_s": round(compile_s, 2), "jax": jax.__version__,
  }
  memory = compiled.memory_analysis()
  if memory is not None:
    result["xla_memory"] = {
        name: int(getattr(memory, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "temp", "alias")
        if hasattr(memory, f"{name}_size_in_bytes")}
  return result


def main(argv):
  del argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for layout in _LAYOUTS.value:
    print(json.dumps(measure(layout)), flush=True)


if __name__ == "__main__":
  app.run(main)
