"""The GAN suite's defaults, in one place: every field of a run at the paper's settings.

``configs/gan/*.py`` start from :func:`base_config` and change a few fields. The loop's keys
(log_every, checkpoint_every, max_checkpoints, eval_every, host_data, conv_implementation) are
the shared vocabulary of ``sympad.train.config.LOOP_FIELDS``.
"""

import ml_collections

from sympad.kinds import KINDS
from sympad.train.config import add_loop_fields

#: D updates of the paper's runs (section 4.5): Table 4 and Figure 5.
BUDGETS = {"table4": 200_000, "fig5": 500_000}


#: The config-file args every GAN config takes (after the colon), with their defaults.
ARGS = dict(kernel="C3", data="cifar10", loss="", norm="", conditional=False, diffaugment="", ema=False,
            lr_decay=False, budget="table4", eval=False, seed=0, seeds=1, runlocal=False)


#: Allowed values of the config-file args (loss and norm '': the mode's default).
ARG_CHOICES = {"kernel": KINDS, "loss": ("", "ns", "hinge"), "norm": ("", "none", "batch"), "budget": tuple(BUDGETS)}


def base_config(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Every field of a GAN run, at the paper's settings; ``args`` from parse_config_arg."""
    config = ml_collections.ConfigDict()
    # Model (gan.models): arch picks the paper's G/D pair; the other fields shrink it.
    config.arch = "sngan"
    config.kernel = args.kernel
    config.width_multiplier = 0.0  # <= 0: 1.5 for C2/C2sp, 0.75 for C4/C4sp, 1 for odd kernels
    # A conditional G normalizes with class-conditional BatchNorm: norm '' picks 'batch' for it.
    config.norm = args.norm or ("batch" if args.conditional else "none")
    config.upsample = "nearest"
    config.weight_init = "sngan"
    config.z_dim = 128
    config.g_channels = ()  # () = the architecture's (C3 widths, before the width multiplier)
    config.bottom_size = 0  # 0 = the architecture's (4)
    config.d_channels = ()
    config.d_downsample = ()  # one 0/1 per d_channels entry
    # Class-conditional models (labels from the data): conditional BN in G, a projection head in D.
    config.conditional = args.conditional
    config.num_classes = 0  # 0 = the dataset's (resolved when training starts; config.json records it)
    config.class_embedding = "per_class"  # G's class gains/biases: 'per_class' (SNGAN) or 'shared' (BigGAN)
    # DiffAugment (gan.diffaugment): policies applied to real and generated images alike, '' = off.
    config.diffaugment = args.diffaugment.replace("+", ",")
    # Data.
    config.data = args.data
    config.max_examples = 0  # 0 = all
    # Optimization (paper 4.5 / compare_gan): Adam for G and D.
    config.loss = args.loss or ("hinge" if args.conditional else "ns")  # '': hinge when conditional (SNGAN-cGAN)
    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2e-4, b1=0.5, b2=0.999,
        schedule="linear" if args.lr_decay else "constant",  # 'linear': to 0 at the last update
    ))
    config.batch_size = 64
    config.n_critic = 5
    config.unroll_d_steps = True  # False: lax.scan over the D updates (XLA:CPU runs rolled loops ~50x slower)
    config.num_train_steps = BUDGETS[args.budget] // config.n_critic  # G updates
    config.ema_decay = 0.9999 if args.ema else 0.0
    config.seed = args.seed
    # Seeds seed, seed + 1, ... trained at once in one program (gan.step); each as its own run.
    config.num_seeds = args.seeds
    config.seed_batching = "auto"  # how: 'vmap' (accelerators), 'loop' (the CPU: XLA's grouped convs are slow)
    # The loop: logging, checkpoints, evaluation (FID/IS through gan.metrics), data placement.
    add_loop_fields(config, log_every=100, checkpoint_every=1000, max_checkpoints=3,
                    eval_every=5000 if args.eval else 0)
    config.sample_every = 1000  # a sample grid (and the digits scores on digits), in train steps
    config.num_grid = 64
    config.digits_quality_samples = 1000  # digits data only: gan.digits_quality on this many samples
    # gan.metrics' fields (see gan.metrics.evaluator); reference_dataset '' = config.data.
    config.eval = ml_collections.ConfigDict(dict(
        protocol="test10k", num_samples=0, num_reference=0, reference_dataset="", feature_network="auto",
        inception_weights=""))
    config.runlocal = args.runlocal
    return config


def shrink_for_local_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few minutes on a 2-core CPU: 16x16 (the 8x8 digits lose nothing), narrow G/D.

    n_critic drops from the paper's 5 to 1: at a fixed CPU budget that gives five times the G
    updates, which is what turns blobs into digits within minutes (measured with
    gan.digits_quality: after the same ~6 min, n_critic=5 reached 500 G steps and 33% confident
    samples, n_critic=1 1500 G steps and 43%).
    """
    if config.data == "cifar10":
        config.data = "digits"
    config.bottom_size = 2  # keeps SNGAN's three up-blocks: 2 -> 4 -> 8 -> 16
    config.g_channels = (32, 32, 32, 32)
    config.d_channels = (32, 32, 32, 32)
    config.d_downsample = (1, 1, 0, 0)
    config.z_dim = 32
    config.batch_size = 32
    config.n_critic = 1
    config.num_train_steps = 2000
    config.log_every = 50
    config.sample_every = 250
    config.checkpoint_every = 250
    config.digits_quality_samples = 1000
    config.eval_every = 0
    return config
