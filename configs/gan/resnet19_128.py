r"""ResNet19 (compare_gan resnet5, 128x128) on CelebA-HQ or LSUN bedroom (paper 4.4, Table 4 bottom).

    python -m gan.main --config=configs/gan/resnet19_128.py:kernel=C4sp,data=celeb_a_hq --workdir=runs/r19_c4sp

Args (after the colon): kernel (C3 | C2 | C2sp | C4 | C4sp), data (celeb_a_hq (default) | lsun/bedroom |
folder:PATH; any sympad.train.data name, loaded at 128 px), loss (ns | hinge; hinge when conditional), norm
(none | batch; batch when conditional), conditional (BigGAN-style: one shared class embedding projected
to every conditional BatchNorm; a labelled dataset, e.g. folder:PATH with class subfolders),
diffaugment (policies joined by '+'), ema, lr_decay,
budget (table4: 200k D steps; fig5: 500k), eval, seed, seeds (that many seeds trained at once, vmapped),
runlocal (a ~1 min CPU smoke run: 32 px digits, widths 8-16, 20 steps). Splits too big for device
memory (LSUN bedroom) stream from the host automatically.
"""

from configs.gan.common import ARG_CHOICES, ARGS, base_config
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, {**ARGS, "data": "celeb_a_hq"}, choices=ARG_CHOICES)
    config = base_config(args)
    config.arch = "resnet19"
    config.class_embedding = "shared"  # BigGAN's, the 128 px reference
    if args.runlocal:
        if config.data == "celeb_a_hq":
            config.data = "digits"
        # Keeps ResNet19's five up-blocks (1 -> 32 px) and six D blocks (four of them downsampling).
        config.bottom_size = 1
        config.g_channels = (16, 16, 16, 16, 8, 8)
        config.d_channels = (8, 8, 16, 16, 16, 16)
        config.d_downsample = (1, 1, 1, 1, 0, 0)
        config.z_dim = 32
        config.batch_size = 16
        config.num_train_steps = 20
        config.log_every = 5
        config.sample_every = 10
        config.checkpoint_every = 10
        config.digits_quality_samples = 200
    return config
