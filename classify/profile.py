r"""Table 1's columns for any classify config: parameters, FLOPs, training memory and speed.

    python -m classify.profile --config=configs/classify/blocks_cifar100.py:block=c2sp,depth=56 --json=c2sp56.json

Prints a table and (with ``--json``) writes a JSON object with

* ``params``: trainable parameters (BatchNorm running statistics excluded);
* ``flops_per_image``: XLA's cost analysis of the jitted inference forward
  (``jax.jit(f).lower(...).compile().cost_analysis()['flops']``) divided by
  the batch size. XLA counts a multiply-add as 2 FLOPs, skips the taps that
  fall on zero padding and adds the elementwise work (BatchNorm, ReLU,
  pooling); the paper's "MFLOPs" count the convolutions' nominal multiply-adds,
  so compare them with ``macs_per_image = flops_per_image / 2`` only roughly
  (Table 1, depth 20: XLA gives C2sp 72.3, Sep 74.8, Invert 79.6, Shift 81.0
  vs the paper's 73.2, 73.6, 76.7, 70.0, which the models' nominal counts
  match to 0.1M);
* ``train_memory_bytes``: the compiled train step's memory analysis,
  temp + argument + output bytes (the three are also given separately);
  on GPU also ``peak_bytes_in_use`` from the device's memory stats after the
  timed steps;
* ``images_per_s``: the full jitted train step (augmentation, forward,
  backward, SGD update) after ``--warmup`` steps, the median over
  ``--repeats`` timings of ``--steps`` steps each.

The batch size is the config's unless ``--batch_size`` is given; the image
side is ``config.input.image_size`` or 32; the C*sp formulation is
``config.conv_implementation`` (``--config.conv_implementation=pad_concat``).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import sympad
from classify.state import create_model, create_optimizer, create_train_state
from classify.step import make_train_step
from classify.train import validate
from sympad.train.config import loaded_config, parse_flags
from sympad.train.errors import ConfigError, run_absl

__all__ = ["COLUMNS", "format_table", "main", "profile"]

#: (JSON key, table header, scale, format) of the printed columns.
COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("params", "Param (M)", 1e-6, "{:.3f}"),
    ("flops_per_image", "GFLOPs/img", 1e-9, "{:.4f}"),
    ("macs_per_image", "MMACs/img", 1e-6, "{:.1f}"),
    ("train_memory_bytes", "Train mem (MB)", 2.0**-20, "{:.1f}"),
    ("images_per_s", "Speed (img/s)", 1.0, "{:.1f}"),
    ("peak_bytes_in_use", "Peak (MB)", 2.0**-20, "{:.1f}"),
)


def _cost(compiled: Any, key: str) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get(key, 0.0))  # absent: no such work (e.g. a pure data-movement program)


def profile(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int | None = None,
    image_size: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    steps: int = 5,
) -> dict[str, Any]:
    """Measures the Table 1 columns for ``config``'s model on the default device.

    Args:
      config: a classify config.
      batch_size: images per train step; default ``config.batch_size``.
      image_size: input side; default ``config.input.image_size`` or 32.
      warmup: untimed train steps after compilation.
      repeats: timings whose median gives ``images_per_s``.
      steps: train steps per timing.

    Returns:
      A JSON-able dict (see the module docstring), with the setting used
      (``batch_size``, ``image_size``, ``kernel``, ``conv_implementation``, ``model``, ``device``).
    """
    for name, value in (("warmup", warmup), ("repeats", repeats), ("steps", steps)):
        if value < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be {'>= 0' if name == 'warmup' else '>= 1'}, got {value}")
    with sympad.use_implementation(config.conv_implementation):  # the formulation is fixed at tracing
        return _profile(config, batch=int(batch_size or config.batch_size),
                        size=int(image_size or config.input.image_size or 32),
                        warmup=warmup, repeats=repeats, steps=steps)


def _profile(config: ml_collections.ConfigDict, *, batch: int, size: int, warmup: int, repeats: int, steps: int
             ) -> dict[str, Any]:
    num_classes = int(config.model.num_classes)
    model = create_model(config)
    tx = create_optimizer(config, total_steps=1000, steps_per_epoch=100)
    state = create_train_state(model, tx, seed=int(config.seed), image_size=size)
    num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))

    # FLOPs: the inference forward, as the paper's complexity column.
    images_f32 = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    forward = jax.jit(lambda variables, x: model.apply(variables, x, train=False))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    flops = _cost(forward.lower(variables, images_f32).compile(), "flops")

    # Memory and speed: the full train step on a uint8 batch.
    _, step_on_batch = make_train_step(model, tx, config, num_classes=num_classes)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, num_classes, (batch,), dtype=np.int32))
    compiled = step_on_batch.lower(state, images, labels).compile()
    mem = compiled.memory_analysis()
    temp, args, out = (int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("temp", "argument", "output"))

    for _ in range(warmup):
        state, metrics = compiled(state, images, labels)
    jax.block_until_ready(state)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, images, labels)
        jax.block_until_ready((state, metrics))
        rates.append(steps * batch / (time.perf_counter() - start))

    device = jax.devices()[0]
    result: dict[str, Any] = {
        "model": config.model.name,
        "kernel": config.kernel,
        "conv_implementation": config.conv_implementation,
        "batch_size": batch,
        "image_size": size,
        "device": f"{device.platform}:{device.device_kind}",
        "params": num_params,
        "flops_per_image": flops / batch,
        "macs_per_image": flops / batch / 2,
        "train_memory_bytes": temp + args + out,
        "temp_bytes": temp,
        "argument_bytes": args,
        "output_bytes": out,
        "images_per_s": statistics.median(rates),
        "images_per_s_all": rates,
    }
    stats = device.memory_stats() if device.platform == "gpu" else None
    if stats and "peak_bytes_in_use" in stats:
        result["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    return result


def format_table(result: dict[str, Any]) -> str:
    """Two aligned lines: the column headers and the values (absent columns are skipped)."""
    cells = [("Model", f"{result['model']} {result['kernel']}")]
    cells += [(header, fmt.format(result[key] * scale)) for key, header, scale, fmt in COLUMNS if key in result]
    widths = [max(len(h), len(v)) for h, v in cells]
    head = "  ".join(h.rjust(w) for (h, _), w in zip(cells, widths))
    row = "  ".join(v.rjust(w) for (_, v), w in zip(cells, widths))
    note = f"(batch {result['batch_size']}, {result['image_size']} px, {result['device']})"
    return f"{head}\n{row}\n{note}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """CLI. With ``argv`` (``argv[0]`` the program name) it parses that in-process and returns the result."""
    flag_values = flags.FlagValues() if argv is not None else flags.FLAGS
    config_flags.DEFINE_config_file(
        "config", None, "classify config file[:args]", flag_values=flag_values, lock_config=True,
        sys_argv=list(argv) if argv is not None else None,
    )
    flags.DEFINE_string("json", None, "also write the result to this JSON file", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, "images per step (default: the config's)", flag_values=flag_values)
    flags.DEFINE_integer(
        "image_size", None, "input side (default: config.input.image_size or 32)", flag_values=flag_values
    )
    flags.DEFINE_integer("warmup", 2, "untimed steps after compilation", flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "timings; images/s is their median", flag_values=flag_values)
    flags.DEFINE_integer("steps", 5, "train steps per timing", flag_values=flag_values)

    def run(_: Any) -> dict[str, Any]:
        if loaded_config(flag_values) is None:
            raise app.UsageError("--config is required, e.g. --config=configs/classify/resnet_cifar.py:runlocal")
        for name in ("batch_size", "image_size"):
            if flag_values[name].value is not None and flag_values[name].value < 1:
                raise ConfigError(f"--{name}={flag_values[name].value}: must be a positive int "
                                  "(or unset: the config's)")
        for name, least in (("warmup", 0), ("repeats", 1), ("steps", 1)):
            if flag_values[name].value < least:
                raise ConfigError(f"--{name}={flag_values[name].value}: must be an int >= {least}")
        validate(flag_values.config)  # before anything compiles
        result = profile(
            flag_values.config,
            batch_size=flag_values.batch_size,
            image_size=flag_values.image_size,
            warmup=flag_values.warmup,
            repeats=flag_values.repeats,
            steps=flag_values.steps,
        )
        print(format_table(result), flush=True)
        if flag_values.json:
            path = Path(flag_values.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return result

    if argv is None:
        run_absl(run, parse_flags=functools.partial(parse_flags, flag_values))  # a user error: one line, status 2
        return None
    parse_flags(flag_values, list(argv))
    return run(None)


if __name__ == "__main__":
    main()
