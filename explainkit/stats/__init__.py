"""Shared statistics: bootstrap CIs, multiple-testing corrections, paired tests."""

from explainkit.stats.bootstrap import bootstrap_ci, bootstrap_diff_ci, bootstrap_distribution
from explainkit.stats.multiple import adjust_pvalues, benjamini_hochberg, holm
from explainkit.stats.paired import PairedTest, wilcoxon_signed_rank, wilson_interval

__all__ = [
    "PairedTest",
    "adjust_pvalues",
    "benjamini_hochberg",
    "bootstrap_ci",
    "bootstrap_diff_ci",
    "bootstrap_distribution",
    "holm",
    "wilcoxon_signed_rank",
    "wilson_interval",
]
