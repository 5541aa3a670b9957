"""The paper's Figures 2 and 3 as analyses of feature maps (``python -m paper.analysis``).

Modules, one concern each: :mod:`~paper.analysis.data` draws the images,
:mod:`~paper.analysis.networks` builds or restores the networks, :mod:`~paper.analysis.commands`
runs each analysis and writes its files, :mod:`~paper.analysis.plots` draws its figures; the
measures themselves are :mod:`paper.measures`. The command line is ``__main__``, which nothing imports.
"""

from paper.analysis.commands import RUNNERS, Settings, run_q_curves, run_receptive_field, run_shift
from paper.analysis.data import load_images
from paper.analysis.networks import Network, build_network, load_checkpoint_network

__all__ = ["RUNNERS", "Network", "Settings", "build_network", "load_checkpoint_network", "load_images",
           "run_q_curves", "run_receptive_field", "run_shift"]
