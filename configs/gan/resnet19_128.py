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

from configs.gan.common import ARG_CHOICES, ARGS, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg

DATA = "celeb_a_hq"


def get_config(arg=None):
    args = parse_config_arg(arg, {**ARGS, "data": DATA}, choices=ARG_CHOICES)
    config = base_config(args)
    config.arch = "resnet19"
    config.class_embedding = "shared"  # BigGAN's, the 128 px reference
    if args.runlocal:
        shrink_for_local_run(config, default_data=DATA)
    return config
