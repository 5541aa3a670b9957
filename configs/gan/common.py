"""The GAN suite's config helpers: the config args, the base config and the runlocal shrink.

Every field, its default, allowed values and meaning, is declared once in ``gan.fields.GAN_FIELDS``
(``python -m gan.main --helpfull`` lists them); :func:`base_config` is its defaults with the config
args applied, and ``configs/gan/*.py`` start from it and change a few fields.
"""

import ml_collections

from gan.fields import GAN_FIELDS
from sympad.train.config import default_config

#: D updates of the paper's runs (section 4.5): Table 4 and Figure 5.
BUDGETS = {"table4": 200_000, "fig5": 500_000}


#: The config-file args every GAN config takes (after the colon), with their defaults.
ARGS = dict(kernel="C3", data="cifar10", loss="", norm="", conditional=False, diffaugment="", ema=False,
            lr_decay=False, budget="table4", eval=False, seed=0, seeds=1, runlocal=False)


#: Allowed values of the config-file args: the values of the fields they set (loss and norm also '':
#: the mode's default).
ARG_CHOICES = {"kernel": GAN_FIELDS["kernel"].allowed, "loss": ("", *GAN_FIELDS["loss"].allowed),
               "norm": ("", *GAN_FIELDS["norm"].allowed), "budget": tuple(BUDGETS)}

#: runlocal per architecture: sizes that keep its blocks (SNGAN: 2 -> 4 -> 8 -> 16 px; ResNet19:
#: five up-blocks, 1 -> 32 px, and six D blocks, four of them downsampling) and a few minutes on a
#: 2-core CPU. SNGAN's n_critic drops from the paper's 5 to 1: at a fixed CPU budget that gives five
#: times the G updates, which is what turns blobs into digits within minutes (measured with
#: gan.digits_quality: after the same ~6 min, n_critic=5 reached 500 G steps and 33% confident
#: samples, n_critic=1 1500 G steps and 43%).
LOCAL_RUNS = {
    "sngan": dict(bottom_size=2, g_channels=(32, 32, 32, 32), d_channels=(32, 32, 32, 32),
                  d_downsample=(1, 1, 0, 0), z_dim=32, batch_size=32, n_critic=1, num_train_steps=2000,
                  log_every=50, sample_every=250, checkpoint_every=250, digits_quality_samples=1000, eval_every=0),
    "resnet19": dict(bottom_size=1, g_channels=(16, 16, 16, 16, 8, 8), d_channels=(8, 8, 16, 16, 16, 16),
                     d_downsample=(1, 1, 1, 1, 0, 0), z_dim=32, batch_size=16, num_train_steps=20, log_every=5,
                     sample_every=10, checkpoint_every=10, digits_quality_samples=200),
}


def base_config(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Every field of a GAN run at the paper's settings (``GAN_FIELDS``' defaults), ``args`` applied.

    Args:
      args: from ``parse_config_arg(arg, ARGS, choices=ARG_CHOICES)``.
    """
    config = default_config(GAN_FIELDS)
    config.kernel = args.kernel
    # A conditional G normalizes with class-conditional BatchNorm: norm '' picks 'batch' for it.
    config.norm = args.norm or ("batch" if args.conditional else "none")
    config.conditional = args.conditional
    config.diffaugment = args.diffaugment.replace("+", ",")
    config.data = args.data
    config.loss = args.loss or ("hinge" if args.conditional else "ns")  # '': hinge when conditional (SNGAN-cGAN)
    config.optimizer.schedule = "linear" if args.lr_decay else "constant"  # 'linear': to 0 at the last update
    config.num_train_steps = BUDGETS[args.budget] // config.n_critic  # G updates
    config.ema_decay = 0.9999 if args.ema else 0.0
    config.seed = args.seed
    config.num_seeds = args.seeds
    config.eval_every = 5000 if args.eval else 0
    config.runlocal = args.runlocal
    return config


def shrink_for_local_run(config: ml_collections.ConfigDict, *, default_data: str) -> ml_collections.ConfigDict:
    """``runlocal``: :data:`LOCAL_RUNS` of ``config.arch``, on digits unless data other than
    ``default_data`` (the config file's) was given."""
    if config.data == default_data:
        config.data = "digits"
    config.update(LOCAL_RUNS[config.arch])
    return config
