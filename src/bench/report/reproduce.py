"""The exact ``bench run`` command that reproduces a run, rebuilt from the parameters it logged."""
from __future__ import annotations

import ast
import shlex

import yaml

from bench.config import RunConfig


def run_command(params: dict[str, str]) -> str:
    """``bench run --set seed=N --set KEY=VALUE ...`` with every logged option that differs from the
    default (and the seed, always), so that the command gives the same configuration.

    Only options of ``bench run`` (``RunConfig``'s parameters) are replayed: what a run logs about
    what it resolved (``dataset_resolved``, ``dataset_fingerprint``, ...) is not an option.
    """
    defaults = RunConfig().to_params()
    settings = [f"seed={_yaml(params.get('seed', defaults['seed']))}"]
    settings += [f"{key}={_yaml(value)}" for key, value in sorted(params.items())
                 if _option(key, defaults) and key != "seed" and _yaml(defaults.get(key, "")) != _yaml(value)]
    return shlex.join(["bench", "run", *[part for item in settings for part in ("--set", item)]])


def _option(key: str, defaults: dict[str, str]) -> bool:
    """``key`` is an option of ``bench run``: a parameter of the defaults, or one below one
    (``refiner_options.ard.steps``)."""
    return key in defaults or key.split(".")[0] in defaults


def _yaml(text: str) -> str:
    """A logged value as the YAML scalar or flow list ``--set`` reads. Values are logged as YAML;
    stores from before hold Python reprs such as ``(0.0, 0.5)`` or ``None``, read as such."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
