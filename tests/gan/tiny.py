"""The GAN tests' tiny run: its config, and comparisons of parameter trees (shared by the test modules)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from configs.gan import sngan_cifar10

# A tiny SNGAN-shaped run: 8x8 synthetic images, widths 8, batch 8, the paper's n_critic = 5.
# The D updates as a lax.scan (unroll_d_steps=False): the tiny step then compiles in 3.8 s instead
# of 8.6 s on a 2-core CPU, and the tests run a few steps, where the rolled loop's run time does
# not count. tests/gan/test_train.py checks that both forms compute the same step.
TINY = dict(data="synthetic", max_examples=64, bottom_size=2, g_channels=(8, 8, 8), d_channels=(8, 8),
            d_downsample=(1, 0), z_dim=8, batch_size=8, n_critic=5, unroll_d_steps=False, num_train_steps=2,
            log_every=1, sample_every=2, checkpoint_every=2, num_grid=4, digits_quality_samples=0, ema_decay=0.5)

#: A config file for ``gan.main`` with the tiny run's settings (``{tiny!r}`` is filled in).
CONFIG_FILE = '''\
"""Tiny test config: python -m gan.main --config=THIS_FILE --workdir=DIR"""
from configs.gan import sngan_cifar10


def get_config(arg=None):
    config = sngan_cifar10.get_config("data=synthetic,runlocal")
    for key, value in {tiny!r}.items():
        config[key] = value
    return config
'''


def tiny_config(**overrides):
    config = sngan_cifar10.get_config("data=synthetic,runlocal")
    for key, value in {**TINY, **overrides}.items():
        config[key] = value
    return config


def numpy_tree(tree):
    def to_numpy(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(to_numpy, tree)


def assert_trees_equal(a, b):
    flat_a, tree_a = jax.tree_util.tree_flatten(numpy_tree(a))
    flat_b, tree_b = jax.tree_util.tree_flatten(numpy_tree(b))
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(x, y)


def all_leaves_differ(a, b) -> bool:
    return all(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(numpy_tree(a)),
                                                         jax.tree_util.tree_leaves(numpy_tree(b))))
