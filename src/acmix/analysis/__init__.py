"""Analyses of the paper: MAC counting, stage costs (Tab. 1), speed (Tab. 5 / 7), ablations (Tab. 6 / 7),
learned path rates (Fig. 5) and the benchmarks; ``acmix paper ...`` runs them (``acmix.cli.paper``)."""

from .macs import count_macs

__all__ = ["count_macs"]
