r"""SNGAN ResNet (32x32) on CIFAR-10 with any generator kernel kind (paper 4.4, Table 4).

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp --workdir=runs/sngan_c2sp

Args (after the colon): kernel (C3 | C2 | C2sp | C4 | C4sp; the generator's convs, widths x1.5 for
C2/C2sp and x0.75 for C4/C4sp), data (default cifar10 via TFDS; 'folder:PATH' for the CIFAR-10 JPEG
folders with train/ and test/, 'digits', 'synthetic'), loss (ns | hinge), norm (none | batch: G
normalization), ema (keep an EMA of G, decay 0.9999), lr_decay (linear to 0), budget (table4: 200k
D steps; fig5: 500k), eval (FID/IS every 5k steps through gan.metrics), seed, runlocal.

runlocal: a few minutes on a 2-core CPU; the demo, on the bundled sklearn digits (16x16, G widths
32 for C3 / 48 for C2sp, D 32, batch 32, n_critic 1, 2000 steps; gan.digits_quality scores in metrics.jsonl):

    python -m gan.main --config=configs/gan/sngan_cifar10.py:kernel=C2sp,data=digits,runlocal --workdir=runs/demo
"""

from sympad.train.config import parse_config_arg
from sympad.kinds import KINDS

#: D updates of the paper's runs (section 4.5): Table 4 and Figure 5.
BUDGETS = {"table4": 200_000, "fig5": 500_000}


def base_config(args):
    """Every field of a GAN run, at the paper's settings; ``args`` from parse_config_arg."""
    import ml_collections

    config = ml_collections.ConfigDict()
    # Model (gan.models): arch picks the paper's G/D pair; the other fields shrink it.
    config.arch = "sngan"
    config.kernel = args.kernel
    config.width_multiplier = 0.0  # <= 0: 1.5 for C2/C2sp, 0.75 for C4/C4sp, 1 for odd kernels
    config.norm = args.norm
    config.upsample = "nearest"
    config.weight_init = "sngan"
    config.sp_implementation = "auto"  # formulation of C2sp/C4sp (sympad.ops.IMPLEMENTATIONS); same results
    config.z_dim = 128
    config.g_channels = ()  # () = the architecture's (C3 widths, before the width multiplier)
    config.bottom_size = 0  # 0 = the architecture's (4)
    config.d_channels = ()
    config.d_downsample = ()  # one 0/1 per d_channels entry
    # Data.
    config.data = args.data
    config.max_examples = 0  # 0 = all
    config.host_data = False  # True: stream batches from the host even when the split fits on the device
    # Optimization (paper 4.5 / compare_gan).
    config.loss = args.loss
    config.lr = 2e-4
    config.b1 = 0.5
    config.b2 = 0.999
    config.lr_decay = "linear" if args.lr_decay else "none"
    config.batch_size = 64
    config.n_critic = 5
    config.unroll_d_steps = True  # False: lax.scan over the D updates (XLA:CPU runs rolled loops ~50x slower)
    config.num_train_steps = BUDGETS[args.budget] // config.n_critic  # G updates
    config.ema_decay = 0.9999 if args.ema else 0.0
    config.seed = args.seed
    # Logging, samples, checkpoints, evaluation.
    config.log_every = 100
    config.sample_every = 1000
    config.num_grid = 64
    config.checkpoint_every = 1000
    config.max_to_keep = 3
    config.eval_every = 5000 if args.eval else 0
    config.digits_quality_samples = 1000  # digits data only: gan.digits_quality on this many samples
    # gan.metrics' fields (see gan.metrics.evaluator); reference_dataset '' = config.data.
    config.eval = ml_collections.ConfigDict(dict(
        protocol="test10k", num_samples=0, num_reference=0, reference_dataset="", feature_network="auto",
        inception_weights=""))
    config.runlocal = args.runlocal
    return config


def shrink_for_local_run(config):
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


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        dict(kernel="C3", data="cifar10", loss="ns", norm="none", ema=False, lr_decay=False, budget="table4",
             eval=False, seed=0, runlocal=False),
        choices={"kernel": KINDS, "loss": ("ns", "hinge"), "norm": ("none", "batch"), "budget": tuple(BUDGETS)},
    )
    config = base_config(args)
    if args.runlocal:
        shrink_for_local_run(config)
    return config
