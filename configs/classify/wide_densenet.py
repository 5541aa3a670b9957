r"""Wide-DenseNet (K = 48, L = 50) on CIFAR-10, 600 epochs (paper 4.2, Table 2).

    python -m classify.main --config=configs/classify/wide_densenet.py:kernel=C2sp --workdir=runs/wdn_c2sp
    python -m classify.main --config=configs/classify/wide_densenet.py:kernel=C2sp,cutout=16,mixup=1.0 \
        --workdir=runs/wdn_c2sp_co_mixup

Args: kernel (default C2sp), data (default cifar10), cutout (square side, 0 = off; Table 2's
"c/o" row: 16), mixup (alpha; Table 2's "mixup" row: 1.0), runlocal (1 layer per block, growth 8,
20 steps, digits unless data is given). Three blocks of 8 dense layers, growth 48, bottleneck 4,
compression 0.5: 3.00M parameters with C2sp (see classify/models/densenet.py). Piecewise-constant
learning-rate decay as for the paper's other DenseNets.
"""

from configs.classify.common import ARG_CHOICES, base_config, shrink_for_local_run
from sympad.train.config import parse_config_arg


def get_config(arg=None):
    args = parse_config_arg(arg, dict(kernel="C2sp", data="", mixup=0.0, cutout=0, runlocal=False), choices=ARG_CHOICES)
    data = args.data or ("digits" if args.runlocal else "cifar10")
    config = base_config(
        model=dict(name="wide_densenet", layers_per_block=8, growth=48, stem_kernel="C3"),
        kernel=args.kernel,
        data=data,
        runlocal=args.runlocal,
    )
    config.num_epochs = 600  # Table 2, as Zoph et al.
    config.optimizer.schedule = "piecewise"
    config.mixup_alpha = args.mixup
    config.cutout = args.cutout
    if args.runlocal:
        shrink_for_local_run(config, tiny_model=dict(layers_per_block=1, growth=8))
    return config
