"""The reference side of stats_reference.rs: reads cases as JSON on stdin, answers each with
scipy's and statsmodels' figures as JSON on stdout. Effects are candidate minus control."""
import json
import sys

import numpy as np
import scipy
import statsmodels
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)


def proportions(c):
    (na, sa), (nb, sb), alpha = c["control"], c["candidate"], c["alpha"]
    z, p = proportions_ztest([sb, sa], [nb, na])  # pooled standard error
    low, high = confint_proportions_2indep(sb, nb, sa, na, method="wald", compare="diff", alpha=alpha)
    return {"z": z, "p": p, "ci_low": low, "ci_high": high}


def welch(c):
    a, b, alpha = np.array(c["control"]), np.array(c["candidate"]), c["alpha"]
    r = stats.ttest_ind(b, a, equal_var=False)
    ci = r.confidence_interval(1 - alpha)
    return {"t": r.statistic, "p": r.pvalue, "df": r.df, "ci_low": ci.low, "ci_high": ci.high}


def welch_stats(c):
    """Welch from summaries: huge n, so huge degrees of freedom."""
    (na, ma, va), (nb, mb, vb), alpha = c["control"], c["candidate"], c["alpha"]
    r = stats.ttest_ind_from_stats(mb, np.sqrt(vb), nb, ma, np.sqrt(va), na, equal_var=False)
    sa, sb = va / na, vb / nb
    df = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    half = stats.t.isf(alpha / 2, df) * np.sqrt(sa + sb)
    return {"t": r.statistic, "p": r.pvalue, "df": df, "ci_low": mb - ma - half, "ci_high": mb - ma + half}


def clustered(rows):
    """The row mean and its cluster-robust (by key) variance: OLS on a constant."""
    keys = np.array([k for k, _ in rows])
    y = np.array([v for _, v in rows], dtype=float)
    fit = sm.OLS(y, np.ones((len(y), 1))).fit(cov_type="cluster", cov_kwds={"groups": keys})
    return fit.params[0], fit.bse[0] ** 2, y.var(ddof=1) / len(y)


def delta(c):
    alpha = c["alpha"]
    ma, va, na = clustered(c["control"])
    mb, vb, nb = clustered(c["candidate"])
    se = np.sqrt(va + vb)
    z = (mb - ma) / se
    crit = stats.norm.isf(alpha / 2)
    return {
        "control": ma, "candidate": mb, "var_control": va, "var_candidate": vb,
        "z": z, "p": 2 * stats.norm.sf(abs(z)),
        "ci_low": mb - ma - crit * se, "ci_high": mb - ma + crit * se,
        "design_effect": (va + vb) / (na + nb),
    }


def sample_size(c):
    if "rate" in c:
        es = proportion_effectsize(c["rate"] + c["mde"], c["rate"])
    else:
        es = c["mde"] / c["sd"]
    n = NormalIndPower().solve_power(effect_size=es, alpha=c["alpha"], power=c["power"], ratio=1.0,
                                     alternative="two-sided")
    return {"effect_size": es, "n": n}


def srm(c):
    a, b, share = c["control"], c["candidate"], c["share"]
    total = a + b
    return {"p": stats.chisquare([a, b], f_exp=[total * (1 - share), total * share]).pvalue}


KINDS = {"proportions": proportions, "welch": welch, "welch_stats": welch_stats, "delta": delta, "sample_size": sample_size,
         "srm": srm}

cases = json.load(sys.stdin)
out = {"versions": {"scipy": scipy.__version__, "statsmodels": statsmodels.__version__},
       "results": [{k: float(v) for k, v in KINDS[c["kind"]](c).items()} for c in cases]}
json.dump(out, sys.stdout)
