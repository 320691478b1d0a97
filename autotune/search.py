"""Optuna search over one backend's ``search_space``, independent of what is being timed.

``measure(config) -> Measurement`` is supplied by the caller (a GPU timer in ``monarchrt-tune``,
a synthetic model in the tests). Invalid configs are pruned by ``is_valid`` before anything is
compiled or measured; configs whose output is wrong are pruned after one run and never win.
TPE when the valid space is larger than the trial budget, else a plain sweep of every valid config.
Studies live in Optuna storage (SQLite by default), so a killed run resumes and several workers
(one per GPU) can share one study.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

# Candidates whose re-timed medians are within this fraction of the best are ties, broken by the
# lexicographically smallest config JSON, so two runs on one GPU write the same table.
TIE_FRACTION = 0.01


@dataclass
class Measurement:
    time_ms: float
    spread_ms: tuple[float, float] = (math.nan, math.nan)
    rel_err: float = 0.0
    ok: bool = True
    error: str = ""


@dataclass
class SearchResult:
    config: dict
    measurement: Measurement
    trials: int  # measured (complete) trials in the study
    pruned_invalid: int
    pruned_wrong: int
    candidates: list[tuple[dict, Measurement]] = field(default_factory=list)


def config_id(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _create_study(optuna, study_name, storage, sampler, attempts: int = 5):
    """create_study, retried: workers that start together race to create the storage's schema."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    def create():
        return optuna.create_study(
            study_name=study_name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
        )

    for attempt in range(attempts - 1):
        try:
            return create()
        except (IntegrityError, OperationalError):
            time.sleep(0.2 * (attempt + 1))
    return create()


def valid_grid(space: dict[str, list], is_valid: Callable[[dict], str | None]) -> list[dict]:
    names = sorted(space)
    grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]
    return [c for c in grid if is_valid(c) is None]


def search(
    space: dict[str, list],
    is_valid: Callable[[dict], str | None],
    measure: Callable[[dict], Measurement],
    *,
    n_trials: int,
    seed: int = 0,
    storage: str | None = None,
    study_name: str = "monarchrt",
    resume: bool = False,
    top_k: int = 3,
    retime: Callable[[dict], Measurement] | None = None,
    progress: Callable[[str], None] = print,
) -> SearchResult:
    """Find the fastest correct config; ``n_trials`` counts measured trials of the whole study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    grid = valid_grid(space, is_valid)
    if not grid:
        raise ValueError("no valid config in the search space")
    sweep = len(grid) <= n_trials
    sampler = optuna.samplers.BruteForceSampler(seed=seed) if sweep else optuna.samplers.TPESampler(seed=seed)
    if storage and not resume:
        with contextlib.suppress(KeyError):  # nothing stored yet
            optuna.delete_study(study_name=study_name, storage=storage)
    study = _create_study(optuna, study_name, storage, sampler)
    target = min(n_trials, len(grid))
    seen: dict[str, Measurement] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        seen[config_id(t.params)] = Measurement(t.value, tuple(t.user_attrs.get("spread_ms", (math.nan,) * 2)))
    counts = {"invalid": 0, "wrong": 0}
    start = time.monotonic()
    done_at_start = len(seen)

    def objective(trial):
        config = {name: trial.suggest_categorical(name, values) for name, values in space.items()}
        reason = is_valid(config)
        if reason is not None:
            counts["invalid"] += 1
            trial.set_user_attr("invalid", reason)
            raise optuna.TrialPruned(reason)
        cid = config_id(config)
        if cid in seen:  # TPE repeats itself; a repeat costs no measurement
            raise optuna.TrialPruned("duplicate")
        m = measure(config)
        if not m.ok:
            counts["wrong"] += 1
            seen[cid] = m
            trial.set_user_attr("error", m.error)
            raise optuna.TrialPruned(m.error)
        seen[cid] = m
        trial.set_user_attr("spread_ms", list(m.spread_ms))
        trial.set_user_attr("rel_err", m.rel_err)
        return m.time_ms

    def measured_in_study() -> int:  # counts other workers' trials too when they share the storage
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    def stop_when_done(study, trial):
        measured = measured_in_study()
        if measured + counts["wrong"] >= target or len(seen) >= len(grid):
            study.stop()
        elif trial.state == optuna.trial.TrialState.COMPLETE or trial.user_attrs.get("error"):
            n = len(seen) - done_at_start
            rate = (time.monotonic() - start) / max(n, 1)
            left = target - measured - counts["wrong"]
            best = min((x.time_ms for x in seen.values() if x.ok), default=math.nan)
            progress(f"[{measured + counts['wrong']}/{target}] best {best:.4f} ms, eta {left * rate:.0f} s")

    if measured_in_study() < target:
        # every valid config may be pruned as a duplicate several times before TPE finds new ones
        study.optimize(objective, n_trials=50 * len(grid), callbacks=[stop_when_done])
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        seen.setdefault(config_id(t.params), Measurement(t.value))  # other workers' results
    ranked = sorted((m.time_ms, cid) for cid, m in seen.items() if m.ok)
    if not ranked:
        raise RuntimeError("every measured config gave a wrong result")
    finalists = [json.loads(cid) for _, cid in ranked[:top_k]]
    timed = [(c, (retime or measure)(c)) for c in finalists]
    timed = [(c, m) for c, m in timed if m.ok]
    best_time = min(m.time_ms for _, m in timed)
    ties = [(config_id(c), c, m) for c, m in timed if m.time_ms <= best_time * (1 + TIE_FRACTION)]
    _, config, m = min(ties, key=lambda t: t[0])
    return SearchResult(config, m, measured_in_study(), counts["invalid"], counts["wrong"], timed)
