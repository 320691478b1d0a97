"""Optuna search over one backend's ``search_space``, independent of what is being timed.

``measure(config) -> Measurement`` is supplied by the caller (a GPU timer in ``monarchrt-tune``,
a synthetic model in the tests). Invalid configs are pruned by ``is_valid`` before anything is
compiled or measured; configs whose output is wrong are pruned after one run and never win.
TPE when the valid space is larger than the trial budget, else a plain sweep of every valid config.
Studies live in Optuna storage (SQLite by default), so a killed run resumes and several workers
(one per GPU) can share one study. A stored study is never deleted unless ``fresh=True`` (``--fresh``)
says so: without ``resume`` or ``fresh`` a study that already holds trials is an error, so a second
worker started without ``--resume`` neither wipes the first's study (which used to kill it inside
Optuna) nor silently discards stored trials. Trials beat a heartbeat; a trial left RUNNING by a
killed worker is failed once its heartbeat is ``GRACE_S`` old and its config is tried again.
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
# Heartbeat of a running trial (seconds), and the silence after which it belongs to a killed worker:
# longer than any one compile + measurement stalls the beat (the beat is a thread of its own).
HEARTBEAT_S = 30
GRACE_S = 120


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


def _retried(create, attempts: int = 5):
    """Retried: workers that start together race to create the storage's schema and the study."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts - 1):
        try:
            return create()
        except (IntegrityError, OperationalError):
            time.sleep(0.2 * (attempt + 1))
    return create()


def _open_storage(optuna, url: str):
    """RDB storage with a heartbeat: a trial whose worker was killed is failed after GRACE_S and
    retried once (the retry is queued with the same config)."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    return _retried(
        lambda: optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **retry)
    )


def _stored_trials(optuna, study_name: str, storage) -> int | None:
    """Trials of the stored study, or None when there is none."""
    if study_name not in optuna.get_all_study_names(storage):
        return None
    return len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")


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
    fresh: bool = False,
    top_k: int = 3,
    retime: Callable[[dict], Measurement] | None = None,
    progress: Callable[[str], None] = print,
) -> SearchResult:
    """Find the fastest correct config; ``n_trials`` counts measured trials of the whole study.

    With ``storage``: ``resume`` continues (or joins) the stored study, ``fresh`` deletes it first;
    with neither, a stored study that holds trials raises ValueError naming both."""
    _check_positive_int("n_trials", n_trials)
    _check_positive_int("top_k", top_k)
    if resume and fresh:
        raise ValueError("resume and fresh exclude each other: continue the stored study or discard it")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    grid = valid_grid(space, is_valid)
    if not grid:
        raise ValueError("no valid config in the search space")
    sweep = len(grid) <= n_trials
    sampler = optuna.samplers.BruteForceSampler(seed=seed) if sweep else optuna.samplers.TPESampler(seed=seed)
    if storage:
        url, storage = storage, _open_storage(optuna, storage)
        if fresh:
            with contextlib.suppress(KeyError):  # nothing stored yet
                optuna.delete_study(study_name=study_name, storage=storage)
        elif not resume and (stored := _stored_trials(optuna, study_name, storage)):
            raise ValueError(
                f"study {study_name!r} in {url} already holds {stored} trials (another worker's, or an earlier "
                "run's): pass --resume (resume=True) to continue it or --fresh (fresh=True) to discard it"
            )
    study = _retried(
        lambda: optuna.create_study(
            study_name=study_name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
        )
    )
    if storage:
        # trials left RUNNING by a killed worker: failed (and their configs queued again) once stale
        optuna.storages.fail_stale_trials(study)
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
