"""``python -m eval attack``: how a condition holds against adversarial prompt sets (attack success rate).

Each ``--attack-set NAME=PATH`` (a preset of :data:`eval.attack.sets.ATTACK_PRESETS`, or ``NAME:CONCEPT=PATH``) is
read with its layout, generated under the conditions through the harness's runner (store ``OUT/attack/``,
sharding, resume), labelled by the classifiers its rule needs, and scored: ``OUT/attack.{csv,md,tex}`` holds the
attack success rate per set and condition. Sets accumulate in the store: a later command with other sets adds
columns to the same table.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from eval.attack.sets import (
    META_KEY,
    ASRRow,
    AttackSet,
    ColumnOverrides,
    asr_from_store,
    load_attack_set,
    missing_labels,
    union_rule,
    write_asr_report,
)
from eval.classifiers import ClassifierOptions, registered_classifiers
from eval.data.prompt_set import PromptSet
from eval.errors import EvalError, StoreError
from eval.store.results import ResultsStore
from eval.t2i.prompt_runs import GenerationSettings, condition_names, run_prompt_set
from eval.t2i.run import T2IConfig

logger = logging.getLogger("safe_encoders.eval")

STORE_DIR = "attack"


@dataclass(kw_only=True)
class AttackConfig(ClassifierOptions, GenerationSettings):
    """Everything ``eval attack`` needs (the command line's options). ``rule``: empty for each set's own;
    ``limit``: the first N prompts of each set."""

    attack_sets: list[str]
    columns: ColumnOverrides = field(default_factory=ColumnOverrides)
    images_per_prompt: int = 1
    rule: tuple[str, ...] = ()

    def t2i_config(self, rule: tuple[str, ...]) -> T2IConfig:
        return self.to_t2i_config(
            prompts=",".join(self.attack_sets),
            store_dir=STORE_DIR,
            images_per_prompt=self.images_per_prompt,
            **{**self.classifier_values(), "rule": rule},
        )


def load_sets(cfg: AttackConfig) -> list[AttackSet]:
    """The attack sets of the command, read and checked (distinct names; ``--rule`` applied; ``--limit`` each)."""
    if not cfg.attack_sets:
        raise EvalError("eval attack needs at least one --attack-set NAME=PATH")
    unknown = sorted(set(cfg.rule) - set(registered_classifiers()))
    if unknown:
        raise EvalError(f"--rule: unknown classifier(s) {unknown}; registered: {sorted(registered_classifiers())}")
    sets = []
    for spec in cfg.attack_sets:
        s = load_attack_set(spec, cfg.columns)
        prompts = s.prompts.limit(cfg.limit) if s.prompts is not None else None
        s = dataclasses.replace(s, prompts=prompts, n_prompts=len(prompts or ()), rule=cfg.rule or s.rule)
        sets.append(s)
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise EvalError(f"--attack-set names must be distinct, got {names}")
    return sets


def record_sets(store: ResultsStore, sets: list[AttackSet]) -> None:
    """Add the sets to the store's list; a name already there must mean the same file, columns and rule."""
    recorded = {s["name"]: s for s in store.get_meta(META_KEY) or []}
    for s in sets:
        new = s.record()
        old = recorded.get(s.name)
        same = old is not None and {k: v for k, v in old.items() if k != "n_prompts"} == {
            k: v for k, v in new.items() if k != "n_prompts"
        }
        if old is not None and not same:
            diff = {k: (old.get(k), new.get(k)) for k in new if old.get(k) != new.get(k) and k != "n_prompts"}
            raise StoreError(
                f"{store.root} already holds attack set {s.name!r} read otherwise (stored vs asked: {diff}); "
                "use another --out or another set name (NAME:CONCEPT=PATH)"
            )
        recorded[s.name] = new
    store.set_meta(META_KEY, list(recorded.values()))


def run_attacks(cfg: AttackConfig, *, shard: tuple[int, int] | None = None) -> list[ASRRow] | None:
    """Generate, label and score every set; returns the ASR rows (main process, run complete), else None."""
    condition_names(cfg.conditions)
    sets = load_sets(cfg)
    prompts = PromptSet("attack", tuple(p for s in sets for p in s.prompts or ()))
    t2i = cfg.t2i_config(union_rule(sets))
    with ResultsStore(t2i.out) as store:
        record_sets(store, sets)
    run = run_prompt_set(t2i, prompts, shard=shard)
    if not run.is_main:
        return None
    if not run.complete:
        logger.warning("the attack run is not complete yet (other shards still working?); no table written")
        return None
    missing = missing_labels(run.store)
    if missing:
        logger.warning("%d images of earlier attack sets lack a label of their rule and are left out", missing)
    rows = asr_from_store(run.store)
    write_asr_report(rows, cfg.out)
    from eval.report.t2i import refresh_report_md

    refresh_report_md(cfg.out)
    return rows
