"""The device campaign: a committed plan of sub-10-minute GPU experiments, the runner that works
through it inside a deadline, the CPU-side evaluation of what comes back, and the report.

    python -m paper.reproduce --budget=device --deadline=480 --out=OUT   # GPU machine
    python -m paper.reproduce --evaluate --out=OUT                       # CPU: FID/KID of the samples
    python -m paper.reproduce --report                                   # REPRODUCTION.md
"""

from paper.campaign.plan import CONFIG_KEYS, Entry, build_plan, load_plan
from paper.campaign.report import render_report
from paper.campaign.runner import run_plan

__all__ = ["CONFIG_KEYS", "Entry", "build_plan", "load_plan", "render_report", "run_plan"]
