r"""Table 1: ShiftNet, inverted-bottleneck, depthwise-separable and C2sp blocks on a CIFAR-100 ResNet (paper 4.2).

    python -m classify.main --config=configs/classify/blocks_cifar100.py:block=sep,depth=56 --workdir=runs/t1_sep56
    python -m classify.main --config=configs/classify/blocks_cifar100.py:block=c2sp,depth=110,mixup=1.0 \
        --workdir=runs/t1_c2sp110_mixup

Args: block (shift | invert | sep | c2sp), depth (20 | 56 | 110, any 6n+2), kernel (default: C2sp
for c2sp, C3 for the depthwise convs of invert/sep; shift has no spatial conv but the stem, which
stays C3 in every model as Table 1's FLOPs require), data (default
cifar100), mixup (alpha; Table 1's "with mixup" column: 1.0), cutout, runlocal (depth 8, width 12,
20 steps, digits unless data is given). Widths (stage 1): shift 36, invert 32 (2/3 of the
blocks), sep 60, c2sp 32: within 1% of Table 1's parameter counts; --config.model.width=N.
"""

from configs.classify.common import ARG_CHOICES, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    from classify.models.resnet_cifar import BLOCKS, TABLE1_DEFAULT_KERNEL, TABLE1_WIDTHS

    args = parse_config_arg(
        arg,
        dict(block="c2sp", depth=20, kernel="", data="", mixup=0.0, cutout=0, runlocal=False),
        choices={"block": tuple(BLOCKS), "kernel": ("", *ARG_CHOICES["kernel"])},
    )
    data = args.data or ("digits" if args.runlocal else "cifar100")
    config = base_config(
        model=dict(
            name="blocks_cifar", block=args.block, depth=args.depth, width=TABLE1_WIDTHS[args.block],
            stem_kernel="C3", downsample="auto",
        ),
        kernel=args.kernel or TABLE1_DEFAULT_KERNEL[args.block],
        data=data,
        runlocal=args.runlocal,
    )
    config.mixup_alpha = args.mixup
    config.cutout = args.cutout
    if args.runlocal:
        shrink_for_local_run(config, tiny_model=dict(depth=8, width=12))
    return config
