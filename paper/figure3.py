r"""Figure 3's sensitivity: which setup choice decides whether C2sp's Q at the last layer is above C3's.

    nice python -m paper.figure3 --num_images=300 --inits=4 --out=runs/figure3 --markdown=runs/figure3/figure3.md

The paper's Fig. 3 (plain ResNet-56 without shortcuts or BN, untrained) shows C2sp keeping more of
Q = mean |F| (eq. 7) than C3. An independent script measured the opposite (C2sp 0.74x C3 at layer
55), the project's ``paper.analysis q-curves`` the paper's order. This measures both kinds under
each choice the two setups differ in, one at a time from the project's setup, and under the
independent script's combination:

- inputs: [-1, 1] (the project) or standardized per channel (the independent script);
- init: flax ``he_normal`` (normal truncated at 2 sigma, rescaled) or an untruncated He normal;
- where the stride-2 convs sit: 0-based layers 19 and 37 (the project) or 18 and 36 ("layers 19
  and 37" counted from 1);
- C3's stride-2 padding: XLA 'SAME' (0 top/left, 1 bottom/right on 32 px) or 1 on both sides
  (PyTorch's padding=1);
- Q's summary: the last layer's Q itself or over layer 0's, averaged over inits arithmetically or
  geometrically; and how many images and inits.

Every conv of C2sp goes through ``sympad.linen.conv``; the project's own model
(``paper.measures.plain_resnet``) is checked against the stack used here on its setup.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from paper import measures
from sympad.linen import conv

KINDS = ("C3", "C2sp")
#: name -> (downsample layers (0-based), C3 stride padding, the (input, init) cells measured on it).
NETWORKS = {
    "project": ((19, 37), "SAME", ("[-1,1]|truncated", "standardized|truncated", "[-1,1]|normal")),
    "stride at 18/36": ((18, 36), "SAME", ("[-1,1]|truncated", "standardized|normal")),
    "C3 stride pad 1/1": ((19, 37), "symmetric", ("[-1,1]|truncated",)),
}


class Stack(nn.Module):
    """``paper.measures.PlainStack`` (55 convs, 16/32/64 channels, ReLU, no bias, no BN) with the
    stride-2 layers and C3's strided padding as options."""

    kind: str
    down_at: tuple[int, ...] = (19, 37)
    c3_stride_padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        outputs, width = [], 16
        for i in range(55):
            stride = 2 if i in self.down_at else 1
            width = 16 if i < self.down_at[0] else 32 if i < self.down_at[1] else 64
            # He (fan-in) init as paper.measures.PlainStack; flax's default would be LeCun's.
            init = nn.initializers.he_normal()
            if self.kind == "C3" and stride == 2 and self.c3_stride_padding == "symmetric":
                layer = nn.Conv(width, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, kernel_init=init,
                                name=f"conv{i}")
            else:
                layer = conv(self.kind, width, strides=stride, use_bias=False, kernel_init=init, name=f"conv{i}")
            y = layer(x)
            outputs.append(y)
            x = nn.relu(y)
        return tuple(outputs)


def untruncated_he(params: Any, key: jax.Array) -> Any:
    """Every kernel redrawn from N(0, 2 / fan_in), fan_in = k*k*C_in (no truncation)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [
        jax.random.normal(k, w.shape, w.dtype) * np.sqrt(2.0 / np.prod(w.shape[:-1])) for k, w in zip(keys, leaves)])


def per_layer_q(apply_fn, params, images: np.ndarray, *, batch: int) -> np.ndarray:
    """(num_batches, 55): Q of every layer over each batch of images (batches of equal size)."""
    out = []
    for lo in range(0, len(images), batch):
        maps = apply_fn(params, jnp.asarray(images[lo:lo + batch]))
        out.append([float(jnp.mean(jnp.abs(m))) for m in maps])
    return np.asarray(out)


def load_cifar_test(num_images: int, seed: int) -> np.ndarray:
    """``num_images`` CIFAR-10 test images drawn with ``seed``, uint8 (N, 32, 32, 3)."""
    from paper.campaign.runner import cifar10_folder
    from sympad.train import data

    folder = cifar10_folder(Path(__file__).resolve().parents[1] / "data")
    if folder is None:
        raise SystemExit("no CIFAR-10 JPEG archives in data/ or ../shared/data")
    ds = data.load(f"folder:{folder}", "test")
    index = np.sort(np.random.default_rng(seed).choice(len(ds.images), num_images, replace=False))
    return np.asarray(ds.images[index])


def measure(images_u8: np.ndarray, *, inits: int, batch: int, seed: int,
            only: tuple[str, str] | None = None) -> dict[str, Any]:
    """Per-batch, per-layer Q of every (network, kind, input, init) for ``inits`` initializations;
    ``only=(network, cell)`` measures just that one."""
    x = images_u8.astype(np.float32)
    inputs = {"[-1,1]": x / 127.5 - 1.0,
              "standardized": (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))}
    q: dict[str, Any] = {}
    networks = NETWORKS if only is None else {only[0]: (*NETWORKS[only[0]][:2], (only[1],))}
    for (name, (down_at, pad, cells)), kind in itertools.product(networks.items(), KINDS):
        if kind == "C2sp" and pad == "symmetric" and only is None:
            q[f"{name}|{kind}"] = q[f"project|{kind}"]  # C3's padding does not touch C2sp
            continue
        model = Stack(kind, down_at=down_at, c3_stride_padding=pad)
        init = jax.jit(model.init)
        apply_fn = jax.jit(lambda p, v, model=model: model.apply(p, v))
        cell = {}
        for r in range(inits):
            params = init(measures.init_key(seed, r), jnp.asarray(inputs["[-1,1]"][:1]))
            if name == "project" and r == 0 and only is None:
                # The stack here is the project's Fig. 3 network on its own setup.
                ref = measures.plain_resnet(kind).apply(params, jnp.asarray(inputs["[-1,1]"][:4]))
                mine = apply_fn(params, jnp.asarray(inputs["[-1,1]"][:4]))
                np.testing.assert_allclose(np.asarray(ref[-1]), np.asarray(mine[-1]), rtol=1e-4, atol=1e-6)
            plain = untruncated_he(params, jax.random.fold_in(measures.init_key(seed + 1, r), 0))
            for init_name, p in (("truncated", params), ("normal", plain)):
                for input_name, v in inputs.items():
                    if f"{input_name}|{init_name}" in cells:
                        cell.setdefault(f"{input_name}|{init_name}", []).append(
                            per_layer_q(apply_fn, p, v, batch=batch))
        q[f"{name}|{kind}"] = {k: np.asarray(v) for k, v in cell.items()}  # (inits, batches, 55)
        print(f"[figure3] {name} {kind} done", flush=True)
    return q


def summary(q: np.ndarray, *, normalize: bool, geometric: bool, inits: int | None = None,
            batches: int | None = None) -> float:
    """Last layer's Q (or over layer 0's) averaged over images, then over inits."""
    q = q[:inits, :batches].mean(axis=1)  # (inits, 55)
    last = q[:, -1] / q[:, 0] if normalize else q[:, -1]
    return float(np.exp(np.log(last).mean()) if geometric else last.mean())


def compare(c3: np.ndarray, c2sp: np.ndarray) -> dict[str, float]:
    """C2sp vs C3 on per-init Q55/Q0 ((inits, batches, 55) each): the ratio of geometric means
    with its normal-theory 95% interval (log Q is near normal over inits), the ratio of arithmetic
    means, and the fraction of (C2sp init, C3 init) pairs where C2sp is higher."""
    a, b = (np.log(x.mean(axis=1)[:, -1] / x.mean(axis=1)[:, 0]) for x in (c3, c2sp))
    d = b.mean() - a.mean()
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {"inits": len(a), "geometric_ratio": float(np.exp(d)), "ci95_low": float(np.exp(d - 1.96 * se)),
            "ci95_high": float(np.exp(d + 1.96 * se)), "arithmetic_ratio": float(np.exp(b).mean() / np.exp(a).mean()),
            "p_c2sp_higher": float((b[:, None] > a[None, :]).mean()),
            "log_sd_c3": float(a.std(ddof=1)), "log_sd_c2sp": float(b.std(ddof=1))}


def table(q: dict[str, Any], *, inits: int, batches: int, batch: int) -> tuple[list[dict[str, Any]], str]:
    rows = []
    setups = [("project (paper.analysis q-curves)", "project", "[-1,1]|truncated"),
              ("inputs standardized", "project", "standardized|truncated"),
              ("untruncated He normal", "project", "[-1,1]|normal"),
              ("stride-2 at 18/36", "stride at 18/36", "[-1,1]|truncated"),
              ("C3 stride pad 1/1", "C3 stride pad 1/1", "[-1,1]|truncated"),
              ("independent script (standardized, normal, 18/36)", "stride at 18/36", "standardized|normal")]
    counts = [(inits, batches), (max(1, inits // 2), batches), (inits, max(1, batches // 2))]
    for (label, net, cell), normalize, geometric, (n_i, n_b) in itertools.product(
            setups, (True, False), (False, True), counts):
        if (n_i, n_b) != (inits, batches) and (normalize, geometric) != (True, False):
            continue  # the count variations only for the project's summary
        c3 = summary(q[f"{net}|C3"][cell], normalize=normalize, geometric=geometric, inits=n_i, batches=n_b)
        sp = summary(q[f"{net}|C2sp"][cell], normalize=normalize, geometric=geometric, inits=n_i, batches=n_b)
        rows.append({"setup": label, "Q": "Q55/Q0" if normalize else "Q55",
                     "mean": "geometric" if geometric else "arithmetic",
                     "images": n_b * batch, "inits": n_i, "C3": c3, "C2sp": sp, "ratio": sp / c3})
    lines = ["| setup | Q | mean over inits | images | inits | C3 | C2sp | C2sp / C3 | C2sp above C3 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setup']} | {r['Q']} | {r['mean']} | {r['images']} | {r['inits']} | {r['C3']:.3g} | "
                     f"{r['C2sp']:.3g} | {r['ratio']:.2f} | {'yes' if r['ratio'] > 1 else 'no'} |")
    return rows, "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m paper.figure3", description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=300)
    p.add_argument("--inits", type=int, default=4)
    p.add_argument("--batch", type=int, default=100, help="images per call (and per sub-sample unit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    p.add_argument("--network", choices=tuple(NETWORKS), default=None,
                   help="measure only this network (with --cell) and print C2sp vs C3 with its interval")
    p.add_argument("--cell", default="[-1,1]|truncated", help="'<inputs>|<init>' for --network")
    args = p.parse_args(argv)
    if args.num_images % args.batch or args.num_images < args.batch:
        raise SystemExit(f"--num_images={args.num_images} must be a positive multiple of --batch={args.batch}")
    start = time.time()
    if args.network:
        q = measure(load_cifar_test(args.num_images, args.seed), inits=args.inits, batch=args.batch, seed=args.seed,
                    only=(args.network, args.cell))
        result = {"network": args.network, "cell": args.cell, "num_images": args.num_images,
                  **compare(q[f"{args.network}|C3"][args.cell], q[f"{args.network}|C2sp"][args.cell]),
                  "seconds": time.time() - start}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
        return result
    q = measure(load_cifar_test(args.num_images, args.seed), inits=args.inits, batch=args.batch, seed=args.seed)
    rows, md = table(q, inits=args.inits, batches=args.num_images // args.batch, batch=args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "seconds": time.time() - start, "num_images": args.num_images, "inits": args.inits,
               "jax": jax.__version__, "device": f"{jax.devices()[0].device_kind}"}
    (args.out / "figure3.json").write_text(json.dumps(payload, indent=1) + "\n")
    np.savez(args.out / "q.npz", **{f"{k}|{c}": v for k, cells in q.items() for c, v in cells.items()})
    if args.markdown:
        args.markdown.write_text(md + "\n")
    print(md)
    print(f"[figure3] {time.time() - start:.0f} s")
    return payload


if __name__ == "__main__":
    main()
