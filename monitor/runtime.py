"""What the monitor runs with, built once from ``Settings`` for a set of roles.

The worker, ``monitor classify``, ``monitor replay`` and ``monitor explain-eval`` all build a
``Runtime``; nothing else assembles models, the explainer, the database, the policy or the author
key. Each role loads only what it uses:

- every role reads the model cards and task definitions (JSON and TOML: no torch);
- ``classify`` loads the classifiers (torch, transformers);
- ``explain`` loads the LLM (llama.cpp) and the explainer mode each measurement allowed;
- ``persist`` opens the database.

So a persist or explain process never imports torch (a persist worker stays a few hundred MB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from monitor.assessment import allowed_mode, verdict_rule
from monitor.config import ClassifierSettings, ExplainerSettings, Settings
from monitor.errors import ConfigError, ModelError
from monitor.explainer.policy import ExplanationBudget, Mode, Policy
from monitor.explainer.prompts import prompt_version
from monitor.inference import Classifier, Explainer
from monitor.model_card import ModelCard, read_card
from monitor.privacy import load_author_key
from monitor.tasks import TaskDefinition, load_task

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from monitor.explainer.weights import WeightsChoice

Role = Literal["classify", "explain", "persist"]
ROLES: tuple[Role, ...] = ("classify", "explain", "persist")
#: How the database is made ready: ``migrate`` upgrades an embedded SQLite (a server database must be
#: migrated by hand, so it is only checked), ``require`` checks that it is at the head revision.
Migration = Literal["migrate", "require"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskModel:
    """A configured model folder as every role sees it: its task, its card, and the explainer mode
    allowed for it (``explain`` unless a measurement allowed ``correct``). The classifier itself is
    the classify role's (``Runtime.classifiers``)."""

    folder: Path
    task: TaskDefinition
    card: ModelCard
    mode: Mode = "explain"
    mode_why: str = "no explainer"
    #: Whether the LLM's verdicts are shown (measured informative), and the P(confirm) threshold.
    verdicts_shown: bool = False
    verdict_threshold: float = 0.5
    verdicts_why: str = "no explainer"

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.card.labels)


def read_task_models(folders: Sequence[Path], *, explainer: Explainer | None = None,
                     policy: Policy | None = None) -> list[TaskModel]:
    """Each folder's card and task (and, with an explainer, the mode its measurement under ``policy`` allows)."""
    policy = policy or Policy()
    if not folders:
        raise ConfigError("no trained model configured: set MONITOR_CLASSIFIER__MODELS (train one with `monitor train`)")
    models = []
    for folder in folders:
        card = read_card(folder)
        task = load_task(card.training.get("task_source", card.task))
        mode, why = ("explain", "no explainer") if explainer is None else allowed_mode(
            folder, explainer.model_name, prompt_version(task), policy)
        shown, threshold, verdicts_why = (False, 0.5, "no explainer") if explainer is None else verdict_rule(
            folder, explainer.model_name, prompt_version(task), policy)
        if mode == "correct" and not shown:  # a grant recorded before verdicts were measured for information
            mode, why = "explain", verdicts_why
        models.append(TaskModel(Path(folder), task, card, mode, why, shown, threshold,  # type: ignore[arg-type]
                                verdicts_why))
    tasks = [m.task.name for m in models]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"two configured models are for the same task: {tasks}")
    return models


def policy_from_settings(settings: ExplainerSettings) -> Policy:
    return Policy(mode="explain", below_threshold=settings.below_threshold, verify_signals=settings.verify_signals,
                  threshold=settings.confidence_threshold)


@dataclass
class Runtime:
    """Models, classifiers, explainer, database, policy, budget and author key for a set of roles."""

    settings: Settings
    roles: frozenset[str]
    #: By task name, for every role.
    models: dict[str, TaskModel]
    #: By task name; only where the runtime classifies.
    classifiers: dict[str, Classifier] = field(default_factory=dict)
    explainer: Explainer | None = None
    factory: sessionmaker[Session] | None = None
    policy: Policy = field(default_factory=lambda: Policy(mode="explain"))
    budget: ExplanationBudget | None = None
    #: The key that pseudonymises authors before they are stored (persist only).
    author_key: bytes = b""

    @classmethod
    def build(cls, settings: Settings, roles: Iterable[str], *, folders: Sequence[Path] | None = None,
              explainer: Explainer | None = None, gguf: Path | None = None,
              migration: Migration = "require") -> Runtime:
        """Load what ``roles`` use. ``folders`` overrides ``classifier.models``; ``explainer`` is an
        already loaded one (tests, a fake), else the explain role loads ``gguf`` or the configured GGUF."""
        wanted = frozenset(roles)
        unknown = wanted - set(ROLES)
        if unknown:
            raise ConfigError(f"unknown role(s) {sorted(unknown)}: choose from {', '.join(ROLES)}")
        if "explain" in wanted and explainer is None:
            explainer = load_explainer(settings, gguf)
        policy = policy_from_settings(settings.explainer)
        models = read_task_models(list(folders) if folders is not None else list(settings.classifier.models),
                                  explainer=explainer if "explain" in wanted else None, policy=policy)
        runtime = cls(settings=settings, roles=wanted, models={m.task.name: m for m in models},
                      explainer=explainer if "explain" in wanted else None, policy=policy)
        if "classify" in wanted:
            runtime.classifiers = load_classifiers(models, settings)
        if runtime.explainer is not None:
            runtime.explainer.warm([m.task for m in models])  # the prompt prefixes now, not on the first posts
        if runtime.explainer is not None or "classify" in wanted:
            # Charged where escalations are admitted: as they are classified (before their evidence is
            # computed), or by the explain stage for cases that come to it unadmitted.
            runtime.budget = ExplanationBudget(settings.explainer.budget_per_s)
        if "persist" in wanted:
            runtime.factory = open_database(settings, migration)
            key = settings.privacy.author_key
            runtime.author_key = load_author_key(key.get_secret_value() if key else None,
                                                 settings.data_dir / "author.key")
        return runtime

    @property
    def task_models(self) -> list[TaskModel]:
        return list(self.models.values())

    def signal_labels(self) -> dict[str, frozenset[str]]:
        """Each task's health-signal labels: all that persist needs to know of the models."""
        return {name: frozenset(m.task.signal_labels) for name, m in self.models.items()}

    def model_versions(self) -> Mapping[str, str]:
        return {name: m.card.model_version for name, m in self.models.items()}


def load_classifiers(models: Sequence[TaskModel], settings: Settings) -> dict[str, Classifier]:
    """Each model folder loaded for inference (the one place torch comes in at run time)."""
    return {m.task.name: load_classifier(m.folder, settings.classifier, m.card) for m in models}


def load_classifier(folder: Path, settings: ClassifierSettings, card: ModelCard | None = None) -> Classifier:
    """A model folder loaded for inference: the encoder (alone or stacked) through torch, or a folder
    that serves its lexical model alone without torch."""
    if not (card or read_card(folder)).uses_encoder:
        from monitor.lexical import LexicalClassifier

        return LexicalClassifier.load(folder)
    from monitor.classifier import EncoderClassifier

    return EncoderClassifier.load(folder, settings)


def load_explainer(settings: Settings, gguf: Path | None = None) -> Explainer:
    """The configured GGUF (or ``gguf``) as a pool of llama.cpp contexts, with the reply cache."""
    from monitor.explainer.llm import ExplainerPool, ExplanationCache
    from monitor.models import default_gguf_path

    cache = ExplanationCache(settings.data_dir / "explanations.sqlite") if settings.explainer.cache else None
    source = gguf or settings.explainer.model_path or default_gguf_path()
    return ExplainerPool.load(explainer_weights(settings, source).path, settings.explainer, cache=cache)


def explainer_weights(settings: Settings, source: Path) -> WeightsChoice:
    """The weights the explainer runs with on this machine (``explainer.weights``), logged."""
    from monitor.explainer.llm import context_threads, file_fingerprint
    from monitor.explainer.weights import choose_weights

    if not source.is_file():
        raise ModelError(f"GGUF file not found: {source}")
    explainer = settings.explainer
    choice = choose_weights(source, weights=explainer.weights, threads=context_threads(explainer),
                            fingerprint=file_fingerprint(source), cache=explainer.weights_cache,
                            gpu_layers=explainer.n_gpu_layers)
    log.info("explainer weights for %s: %s", source.name, choice.describe())
    return choice


def open_database(settings: Settings, migration: Migration) -> sessionmaker[Session]:
    """A sessionmaker on the configured database, at the head revision."""
    from monitor.storage import migrations
    from monitor.storage.session import create_db_engine, make_sessionmaker

    if migration == "migrate" and settings.database.url.startswith("sqlite"):
        migrations.upgrade(settings.database)
    else:
        migrations.require_head(settings.database)
    return make_sessionmaker(create_db_engine(settings.database))
