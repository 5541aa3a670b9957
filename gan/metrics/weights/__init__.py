"""Shipped weights (.npz) of the offline feature network; see gan.metrics.offline."""
