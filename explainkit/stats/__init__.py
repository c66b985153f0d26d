"""Shared statistics: bootstrap CIs, multiple-testing corrections, paired, rank and stratified tests, AUROC."""

from explainkit.stats.auroc import (
    DeLong,
    MannWhitney,
    RankedScores,
    auroc,
    delong_ci,
    mann_whitney,
    mann_whitney_log10_p,
    mann_whitney_z,
    normal_log10_sf,
    tie_sum,
)
from explainkit.stats.bootstrap import bootstrap_ci, bootstrap_diff_ci, bootstrap_distribution
from explainkit.stats.multiple import adjust_pvalues, benjamini_hochberg, holm
from explainkit.stats.paired import PairedTest, wilcoxon_signed_rank, wilson_interval
from explainkit.stats.stratified import StratifiedDifference, stratified_difference

__all__ = [
    "DeLong",
    "MannWhitney",
    "PairedTest",
    "RankedScores",
    "StratifiedDifference",
    "adjust_pvalues",
    "auroc",
    "benjamini_hochberg",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "bootstrap_distribution",
    "delong_ci",
    "holm",
    "mann_whitney",
    "mann_whitney_log10_p",
    "mann_whitney_z",
    "normal_log10_sf",
    "stratified_difference",
    "tie_sum",
    "wilcoxon_signed_rank",
    "wilson_interval",
]
