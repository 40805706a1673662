"""Plugin lookup through Python entry points.

Two groups are known: ``dlm_trl.estimators`` (likelihood estimators) and
``dlm_trl.rewards`` (reward functions). A name is resolved in this order:

1. an entry point of that name in the group (first-party plugins are registered the
   same way as third-party ones, in ``pyproject.toml``);
2. a ``"package.module:attribute"`` path;
3. otherwise a :class:`PluginNotFoundError` that lists what is installed and suggests
   the closest names.

Loading is lazy: only the requested entry point's module is imported. Lookups are
cached per process, so every rank of a distributed job can call them freely.

An entry point added to ``pyproject.toml`` is invisible until the package is
reinstalled (``pip install -e .``); the error message says so.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import inspect
import re
from typing import Any

ESTIMATORS = "dlm_trl.estimators"
REWARDS = "dlm_trl.rewards"

_KIND = {ESTIMATORS: "likelihood estimator", REWARDS: "reward function"}


class PluginNotFoundError(LookupError):
    """Raised when a plugin name matches neither an entry point nor an import path."""


def _entry_points(group: str) -> dict[str, md.EntryPoint]:
    # Not cached: tests (and users) may put a new distribution on sys.path at run time.
    eps = md.entry_points(group=group)
    found: dict[str, md.EntryPoint] = {}
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def available(group: str) -> list[str]:
    """Names of the installed plugins of ``group``, sorted."""
    return sorted(_entry_points(group))


def describe(group: str, name: str) -> str:
    """One line about the plugin ``name`` of ``group``: the first sentence of its docstring.

    Imports the plugin; a plugin that fails to import is described by its error instead of
    raising, so that listing plugins never fails because of one broken package.
    """
    try:
        obj = load(group, name)
    except Exception as err:  # noqa: BLE001 - any import failure becomes the description
        return f"(fails to import: {err})"
    doc = inspect.getdoc(obj) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    if not first:
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', name)} (no docstring)"
    # the "``name``: " prefix some estimators start their docstring with repeats the name
    first = re.sub(rf"^``{re.escape(name)}``\s*[:—-]\s*", "", first)
    return first


def _import_path(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load(group: str, name: str) -> Any:
    """Return the object registered as ``name`` in ``group`` (not instantiated)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {_KIND.get(group, 'plugin')} name must be a non-empty string, got {name!r}")
    eps = _entry_points(group)
    if name in eps:
        try:
            return eps[name].load()
        except Exception as err:  # a broken plugin must say which one it is
            raise ImportError(
                f"the {_KIND.get(group, 'plugin')} {name!r} is registered as {eps[name].value!r} "
                f"(entry-point group {group!r}) but failed to import: {err}"
            ) from err
    if ":" in name:
        try:
            return _import_path(name)
        except (ImportError, AttributeError) as err:
            raise PluginNotFoundError(
                f"could not import {_KIND.get(group, 'plugin')} {name!r}: {err}. "
                "A path must look like 'package.module:attribute' and be importable."
            ) from err
    names = sorted(eps)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise PluginNotFoundError(
        f"unknown {_KIND.get(group, 'plugin')} {name!r}.{hint} Installed ({group}): "
        f"{', '.join(names) if names else 'none'}. You can also pass an import path "
        "'package.module:attribute'. An entry point added to pyproject.toml is only visible "
        "after reinstalling the package (pip install -e .)."
    )


def load_estimator(name: str, **kwargs: Any) -> Any:
    """Instantiate the likelihood estimator registered as ``name`` with ``kwargs``."""
    obj = load(ESTIMATORS, name)
    return obj(**kwargs) if isinstance(obj, type) else obj


def load_reward(name: str) -> Any:
    """Return the reward function registered as ``name`` (a plain callable)."""
    fn = load(REWARDS, name)
    if not callable(fn):
        raise TypeError(f"reward {name!r} resolved to {fn!r}, which is not callable")
    return fn
