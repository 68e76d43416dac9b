"""The recipe registry: which datasets cmbrl generates (D4RL's recipes for hopper, halfcheetah and walker2d) and their
names.

:data:`DATASET_RECIPES` maps a Minari id (``cmbrl/<env>/<name>-v0``) to a :class:`DatasetRecipe`;
:func:`resolve_dataset_id` maps D4RL-style short names (``hopper-medium-replay``) to those ids. Generating a recipe is
:mod:`cmbrl.datasets.collection`'s job; its behaviour policies are :mod:`cmbrl.datasets.policies`'.

Reference: Fu et al., "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", arXiv:2004.07219 (the
``medium`` recipe and the reference returns used for normalised scores).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = ["DatasetRecipe", "DATASET_RECIPES", "ENVS", "RECIPE_KINDS", "resolve_dataset_id"]


ENVS: dict[str, tuple[str, float, float]] = {
    "hopper": ("Hopper-v5", -20.272305, 3234.3),
    "halfcheetah": ("HalfCheetah-v5", -280.178953, 12135.0),
    "walker2d": ("Walker2d-v5", 1.629008, 4592.3),
}
"""``env name -> (Gymnasium id, D4RL random-policy return, D4RL expert return)``; the returns normalise scores to 0
and 100 (D4RL ``infos.py`` reference scores, arXiv:2004.07219)."""

RECIPE_KINDS = ("random", "policy", "replay", "combine")


@dataclass(frozen=True)
class DatasetRecipe:
    """How cmbrl generates a dataset that cannot be downloaded (the D4RL recipe, MOPO arXiv:2005.13239 sec. 5.1).

    Attributes:
        env_id: Gymnasium id of the environment, e.g. ``"Hopper-v5"`` (its own ``TimeLimit`` applies).
        kind: ``"random"`` (uniformly random actions), ``"policy"`` (a stochastic SAC policy, ``policy_file``),
            ``"replay"`` (a SAC training run replayed: ``policy_file`` is a replay bundle listing, in training order,
            the policy snapshot that acted and how many steps it collected; see :func:`load_replay_schedule`) or
            ``"combine"`` (the datasets in ``sources`` concatenated with :func:`minari.combine_datasets`).
        num_steps: environment steps (= transitions) for ``"random"`` and ``"policy"``; ``None`` for ``"replay"``
            (the bundle's schedule decides) and ``"combine"`` (the sum of the sources).
        ref_min_score, ref_max_score: episode returns that normalise to 0 and 1 in
            :func:`minari.get_normalized_score` (D4RL random and expert returns, reward units).
        description: what the dataset is; stored in the Minari metadata.
        policy_file: checkpoint for ``"policy"`` / ``"replay"``: a file name in ``cmbrl/components/data/`` or an
            absolute path.
        sources: dataset ids for ``"combine"``.

    Examples:
        >>> recipe = DATASET_RECIPES["cmbrl/hopper/medium-v0"]
        >>> recipe.env_id, recipe.kind, recipe.num_steps
        ('Hopper-v5', 'policy', 1000000)
    """

    env_id: str
    kind: str
    num_steps: int | None
    ref_min_score: float
    ref_max_score: float
    description: str
    policy_file: str | None = None
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in RECIPE_KINDS:
            raise ValueError(f"Unknown recipe kind {self.kind!r}; allowed: {RECIPE_KINDS}.")
        if (self.num_steps is None) != (self.kind in ("replay", "combine")):
            raise ValueError(f"A {self.kind!r} recipe needs num_steps "
                             f"{'None' if self.kind in ('replay', 'combine') else '>= 1'}, got {self.num_steps!r}.")
        if (self.policy_file is None) != (self.kind not in ("policy", "replay")):
            raise ValueError(f"A {self.kind!r} recipe {'needs' if self.kind in ('policy', 'replay') else 'takes no'} "
                             f"policy_file, got {self.policy_file!r}.")
        if bool(self.sources) != (self.kind == "combine"):
            raise ValueError(f"Only 'combine' recipes take sources; got kind {self.kind!r} and sources {self.sources}.")


_RECIPE_TEXT = {
    "random": "D4RL-style {env}-random on {env_id}: {num_steps:,} steps of a uniformly random policy.",
    "medium": "D4RL-style {env}-medium on {env_id}: {num_steps:,} steps of a stochastic SAC policy stopped early at "
              "about a third of expert return.",
    "medium-replay": "D4RL-style {env}-medium-replay on {env_id}: the replay buffer of the SAC run up to the medium "
                     "policy, re-collected from the run's policy snapshots (each snapshot collects the steps the run "
                     "collected after it was saved; the first segment is uniformly random, as the SAC warm-up).",
    "expert": "D4RL-style {env}-expert on {env_id}: {num_steps:,} steps of the best stochastic SAC policy cmbrl "
              "trained on this env (see the card for how good it is; D4RL's expert is a fully trained SAC).",
    "medium-expert": "D4RL-style {env}-medium-expert on {env_id}: cmbrl/{env}/medium-v0 and cmbrl/{env}/expert-v0 "
                     "concatenated.",
}


def _d4rl_recipes() -> dict[str, DatasetRecipe]:
    recipes = {}
    for env, (env_id, ref_min, ref_max) in ENVS.items():
        def recipe(name: str, kind: str, num_steps: int | None = None, **kwargs) -> None:
            text = _RECIPE_TEXT[name].format(env=env, env_id=env_id, num_steps=num_steps or 0)
            text += f" Scores normalise with D4RL's {env} reference returns ({ref_min}, {ref_max})."
            recipes[f"cmbrl/{env}/{name}-v0"] = DatasetRecipe(env_id, kind, num_steps, ref_min, ref_max, text,
                                                              **kwargs)

        recipe("random", "random", 1_000_000)
        recipe("medium", "policy", 1_000_000, policy_file=f"{env}_medium_sac.pt")
        recipe("medium-replay", "replay", policy_file=f"{env}_replay_sac.pt")
        recipe("expert", "policy", 1_000_000, policy_file=f"{env}_expert_sac.pt")
        recipe("medium-expert", "combine", sources=(f"cmbrl/{env}/medium-v0", f"cmbrl/{env}/expert-v0"))
    return recipes


DATASET_RECIPES: dict[str, DatasetRecipe] = _d4rl_recipes()
"""Datasets cmbrl can generate, by Minari dataset id: ``cmbrl/<env>/<name>-v0`` for ``env`` in ``hopper``,
``halfcheetah``, ``walker2d`` and ``name`` in ``random``, ``medium``, ``medium-replay``, ``expert``,
``medium-expert`` (see :class:`DatasetRecipe`)."""


def resolve_dataset_id(name: str) -> str:
    """Maps a short name such as ``"hopper-medium-replay"`` (D4RL style) to ``"cmbrl/hopper/medium-replay-v0"``.

    Full Minari ids (containing ``/``) are returned unchanged.

    Raises:
        ValueError: a short name that is not a cmbrl recipe (the message lists the allowed names).
    """
    if "/" in name:
        return name
    env, _, rest = name.partition("-")
    dataset_id = f"cmbrl/{env}/{rest}-v0"
    if dataset_id not in DATASET_RECIPES:
        names = sorted(recipe_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
                       for recipe_id in DATASET_RECIPES)
        raise ValueError(f"Unknown dataset name {name!r}; allowed: {names} (or a full Minari id).")
    return dataset_id


def _short_name(dataset_id: str) -> str:
    """``"cmbrl/hopper/medium-v0"`` -> ``"hopper-medium"`` (the CLI's name); other ids unchanged."""
    if dataset_id in DATASET_RECIPES:
        return dataset_id.removeprefix("cmbrl/").removesuffix("-v0").replace("/", "-")
    return dataset_id


def _did_you_mean(dataset_id: str) -> str:
    """`` Did you mean 'cmbrl/hopper/medium-v0'?`` for a near miss of a recipe id (a typo, or the D4RL-style short
    name ``hopper-medium``), else ``""``."""
    short = {f"{env}-{name.rsplit('-v', 1)[0]}": full
             for full in DATASET_RECIPES for _, env, name in [full.split("/")]}  # "hopper-medium" -> its id
    key = dataset_id.lower().strip()
    if key in short:
        return f" Did you mean '{short[key]}'?"
    close = difflib.get_close_matches(key, list(DATASET_RECIPES), n=1, cutoff=0.8)
    close = close or [short[k] for k in difflib.get_close_matches(key, list(short), n=1, cutoff=0.8)]
    return f" Did you mean '{close[0]}'?" if close else ""
