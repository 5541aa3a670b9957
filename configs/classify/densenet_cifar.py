r"""DenseNet-BC (depth 6n+4) on CIFAR-100 with C3 or C2sp (paper 4.1, Figure 4 middle/right).

    python -m classify.main --config=configs/classify/densenet_cifar.py:depth=112,kernel=C2sp --workdir=runs/dn112_c2sp

Args: depth (6n+4, n = 3..18: 22, 40, 58, 76, 94, 112; default 112), kernel, growth (default 12),
data (default cifar100), mixup, cutout, runlocal (depth 10, growth 6, 20 steps, digits unless data
is given). Learning rate: piecewise-constant decay (x0.1 at 50% and 75%), which the paper
(4.5) uses for its DenseNet tests instead of cosine; --config.optimizer.schedule=cosine to change.
"""

from configs.classify.common import ARG_CHOICES, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(
        arg,
        dict(depth=112, kernel="C3", growth=12, data="", mixup=0.0, cutout=0, runlocal=False),
        choices=ARG_CHOICES,
    )
    data = args.data or ("digits" if args.runlocal else "cifar100")
    config = base_config(
        model=dict(name="densenet_cifar", depth=args.depth, growth=args.growth, stem_kernel="C3"),
        kernel=args.kernel,
        data=data,
        runlocal=args.runlocal,
    )
    config.optimizer.schedule = "piecewise"
    config.mixup_alpha = args.mixup
    config.cutout = args.cutout
    if args.runlocal:
        shrink_for_local_run(config, tiny_model=dict(depth=10, growth=6))
    return config
