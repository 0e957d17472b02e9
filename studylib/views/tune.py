"""What tune.ipynb shows: the search space, the trials, where the time went, Optuna's figures, and
tuned against default, as tables and figures read off an Optuna study (the search is
studylib.stages.tune's).
"""
from __future__ import annotations

import warnings

import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from studylib.errors import ParameterError
from studylib.stages.tune import Retrained, TuneParams, final_val, short, state_totals, trial_seconds
from studylib.views.format import table


def space_frame(space: dict) -> pd.DataFrame:
    """The search space as a table: parameter, kind, range or choices, scale."""
    rows = []
    for name, d in space.items():
        if isinstance(d, CategoricalDistribution):
            rows.append({"parameter": name, "kind": "categorical", "values": ", ".join(map(str, d.choices)), "scale": ""})
        else:
            rows.append({"parameter": name, "kind": "int" if isinstance(d, IntDistribution) else "float",
                         "values": f"[{d.low:g}, {d.high:g}]", "scale": "log" if d.log else "linear"})
    return pd.DataFrame(rows).set_index("parameter")


def _params(params: dict) -> str:
    """A trial's parameters in one cell a reader can read (and the column can wrap): 3 significant digits."""
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                     for k, v in short(params).items())


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, value (val top-1; for a pruned trial its last report), epochs, seconds, params,
    and the worker that ran it when several did."""
    rows = []
    for t in study.trials:
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name,
                     "val top-1": t.value if t.value is not None else last,
                     "epochs": len(t.intermediate_values), "seconds": round(trial_seconds(t), 1),
                     "parameters": _params(t.params), "worker": t.user_attrs.get("worker")})
    frame = pd.DataFrame(rows).set_index("trial") if rows else pd.DataFrame()
    if not frame.empty and frame["worker"].nunique(dropna=False) <= 1:
        frame = frame.drop(columns="worker")
    return frame


def best_and_worst(study: optuna.Study) -> pd.DataFrame:
    """The best and the worst completed trial, as study 004 reported its jobs."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not done:
        return pd.DataFrame()
    best, worst = max(done, key=lambda t: t.value), min(done, key=lambda t: t.value)
    return pd.DataFrame([{"": name, "trial": t.number, "val top-1": t.value, "parameters": _params(t.params),
                          "seconds": round(trial_seconds(t), 1)} for name, t in (("best", best), ("worst", worst))]
                        ).set_index("")


def time_by_state(study: optuna.Study, epochs: int) -> pd.DataFrame:
    """Trials, seconds and epochs trained per state; 'epochs saved' is what pruning spared; the share of
    seconds as a fraction (the notebook shows it as a percentage)."""
    frame = pd.DataFrame.from_dict(state_totals(study, epochs), orient="index")
    if not frame.empty:
        frame["share of seconds"] = frame["seconds"] / frame["seconds"].sum()
    return frame


def time_view(study: optuna.Study, epochs: int) -> pd.DataFrame:
    """time_by_state as the book shows it: whole numbers, seconds to 3 digits, the share of seconds in percent."""
    frame = time_by_state(study, epochs)
    if frame.empty:
        return frame
    out = table(frame.drop(columns="share of seconds"), 3)
    out["share of seconds"] = frame["share of seconds"].map(lambda x: f"{100 * x:.0f}%")
    return out


PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice", "timeline")


def plot(study: optuna.Study, kind: str):
    """One of optuna.visualization.matplotlib's figures (static, for the book); a note when it cannot be drawn."""
    import matplotlib.pyplot as plt  # lazy: only the notebook draws
    from optuna.visualization import matplotlib as ovm  # lazy: imports matplotlib
    if kind not in PLOTS:
        raise ParameterError("kind", kind, f"one of {', '.join(PLOTS)}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if kind in ("param_importances", "parallel_coordinate", "slice") and len(done) < 2:
        print(f"{kind.replace('_', ' ')}: needs at least two completed trials; this study has {len(done)}.")
        return None
    extra = {}
    if kind == "param_importances":   # fANOVA (random forest), seeded: the same trials give the same bars
        extra["evaluator"] = optuna.importance.FanovaImportanceEvaluator(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            ax = getattr(ovm, f"plot_{kind}")(study, **extra)
        except (ValueError, RuntimeError) as err:   # e.g. importances when no parameter varies
            print(f"{kind.replace('_', ' ')}: not drawn ({err}).")
            return None
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        if kind == "slice":           # these two place their own colour bar: no tight_layout
            fig.set_size_inches(2.6 * len(study.best_trial.params), 3.2)
            for a in fig.axes:        # a narrow log range labels its minor ticks on top of each other
                if a.get_xscale() == "log":
                    a.xaxis.set_minor_formatter(plt.NullFormatter())
        elif kind == "parallel_coordinate":
            fig.set_size_inches(11, 4.5)
        else:
            fig.set_size_inches(8, 4)
            if kind == "intermediate_values":
                ax.set(xlabel="epoch", ylabel="val top-1")
            elif kind == "optimization_history":
                ax.set(ylabel="val top-1")
            fig.tight_layout()
    return fig


def comparison(params: TuneParams, study: optuna.Study, r: Retrained) -> pd.DataFrame:
    """Default vs tuned hyperparameters: validation (search objective) and test (touched once per run)."""
    rows = {
        "default": {"val top-1 (trial budget)": final_val(r.default), "test top-1": r.default["test"]["top1"],
                    "test balanced accuracy": r.default["test"]["balanced_accuracy"], "run": r.default["run_id"]},
        "tuned": {"val top-1 (trial budget)": final_val(r.tuned), "test top-1": r.tuned["test"]["top1"],
                  "test balanced accuracy": r.tuned["test"]["balanced_accuracy"], "run": r.tuned["run_id"]},
    }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.loc["gain (tuned - default)"] = [frame.iloc[1, i] - frame.iloc[0, i] for i in range(3)] + [""]
    return frame
