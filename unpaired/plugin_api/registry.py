"""The plugin manager: finds plugins, collects their components, looks them up and builds them.

Plugins are modules named by entry points in the group ``unpaired`` (the
built-ins included). ``UNPAIRED_PLUGINS=dist-a,dist-b`` restricts loading to
those distributions. A plugin that fails to import or to register is reported
in ``Registry.problems`` and skipped; the others still load.

Besides plugins, a registry has *listeners*: objects with lifecycle hook implementations
(trackers, tests) added for a while with :meth:`Registry.listening`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from unpaired import ENTRY_POINT_GROUP, PROJECT_NAME
from unpaired.errors import UnpairedError, pydantic_problems
from unpaired.plugin_api import hookspecs
from unpaired.plugin_api.components import KINDS, REGISTER_HOOKS, Choice, Component, ComponentKind

PLUGINS_ENV = "UNPAIRED_PLUGINS"
_VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ComponentError(UnpairedError):
    """Base of the errors a spec's component choice can raise; the message says what to do."""

    exit_code = 2


class UnknownComponentError(ComponentError):
    """No plugin registered a component of this kind and name."""


class ComponentConflictError(ComponentError):
    """Two or more plugins registered the same kind and name."""


class InvalidParamsError(ComponentError):
    """A component's parameters failed its own pydantic model.

    ``errors`` holds ``(dotted_path, message)`` pairs, e.g. ``("generator.n_blocks", "...")``.
    """

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("\n".join(f"{path}: {message}" for path, message in errors))

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries (worker -> study)
        return type(self), (self.errors,)


def normalize_distribution(name: str) -> str:
    """PEP 503 normalised distribution name: ``My_Plugin.x`` -> ``my-plugin-x``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _strict(model: type[BaseModel]) -> type[BaseModel]:
    """The model itself if it forbids unknown keys, else a subclass that does. Its instances pickle as instances of
    ``model`` (the subclass, made here, cannot be found by name): a component's parameters go to worker processes."""
    if model.model_config.get("extra") == "forbid":
        return model

    def reduce(params: BaseModel) -> tuple[Any, ...]:
        return _as_model, (model, dict(params))

    return type(model.__name__, (model,), {"model_config": ConfigDict(extra="forbid"), "__module__": model.__module__, "__reduce__": reduce})


def _as_model(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """What a strict subclass's instance unpickles as: ``model`` with the same, already validated, values."""
    return model.model_construct(**values)


class Registry:
    """All components registered by the loaded plugins, by kind and name."""

    def __init__(self) -> None:
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.problems: list[str] = []
        """Human-readable reports of plugins that could not be loaded or registered."""
        self._components: dict[tuple[ComponentKind, str], list[Component]] = {}
        self.excluded: list[str] = []
        """Distributions with ``unpaired`` plugins that ``$UNPAIRED_PLUGINS`` left out."""
        self.listeners: list[object] = []
        """The listeners added with :meth:`listening` and not yet removed, oldest first."""

    @classmethod
    def from_entry_points(cls, only: Iterable[str] | None = None) -> Registry:
        """Load every plugin of the entry-point group ``unpaired``.

        ``only`` restricts loading to these distribution names; by default it is
        read from ``$UNPAIRED_PLUGINS`` (comma-separated), and all load when unset.
        """
        registry = cls()
        if only is None and os.environ.get(PLUGINS_ENV) is not None:
            only = [name for name in os.environ[PLUGINS_ENV].split(",") if name.strip()]
        wanted = None if only is None else {normalize_distribution(name.strip()) for name in only}
        seen: set[str] = set()
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist is not None else "<unknown distribution>"
            version = dist.version if dist is not None else "?"
            seen.add(normalize_distribution(dist_name))
            if wanted is not None and normalize_distribution(dist_name) not in wanted:
                if dist_name not in registry.excluded:
                    registry.excluded.append(dist_name)
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken plugin must not take the others down
                registry.problems.append(
                    f"plugin {entry_point.name!r} of {dist_name} {version} failed to import ({entry_point.value}): {type(error).__name__}: {error}"
                )
                continue
            registry.add_plugin(plugin, f"{dist_name}:{entry_point.name}", dist_name, version)
        for missing in sorted((wanted or set()) - seen):
            registry.problems.append(
                f"{PLUGINS_ENV} names {missing!r}, but no installed distribution of that name provides '{ENTRY_POINT_GROUP}' plugins"
            )
        return registry

    def add_plugin(self, plugin: object, plugin_name: str, distribution: str, version: str) -> None:
        """Register one plugin object (usually a module) and collect the components it registers."""
        manager = self.plugin_manager
        try:
            manager.register(plugin, name=plugin_name)
            manager.check_pending()
        except (ValueError, pluggy.PluginValidationError) as error:
            if manager.is_registered(plugin):
                manager.unregister(plugin)
            self.problems.append(f"plugin {plugin_name} ({distribution} {version}) is invalid: {error}")
            return
        for kind, hook_name in REGISTER_HOOKS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                if impl.plugin is plugin:
                    self._call_register_hook(impl, kind, plugin_name, distribution, version)

    def _call_register_hook(self, impl: Any, kind: ComponentKind, plugin_name: str, distribution: str, version: str) -> None:
        def register(name: str, factory: Any, params_model: type[BaseModel], description: str = "", default: bool = False) -> None:
            where = f"plugin {plugin_name} ({distribution} {version}) registering {kind} {name!r}"
            if not isinstance(name, str) or not _VALID_NAME.match(name):
                raise ValueError(f"{where}: the name must be letters, digits, '_', '.' or '-'")
            if not callable(factory):
                raise ValueError(f"{where}: the factory is not callable")
            if not (isinstance(params_model, type) and issubclass(params_model, BaseModel)):
                raise ValueError(f"{where}: params_model must be a pydantic BaseModel subclass")
            component = Component(kind, name, factory, _strict(params_model), str(description), distribution, version, bool(default))
            self._components.setdefault((kind, name), []).append(component)

        try:
            impl.function(register=register)
        except Exception as error:
            self.problems.append(f"{impl.function.__name__} of plugin {plugin_name} failed: {type(error).__name__}: {error}")

    def components(self, kind: ComponentKind | None = None) -> list[Component]:
        """Every registered component (of one kind if given), sorted by kind and name; conflicts appear once per claimant."""
        found = [c for (k, _), claims in self._components.items() if kind in (None, k) for c in claims]
        return sorted(found, key=lambda c: (KINDS.index(c.kind), c.name, c.distribution))

    def names(self, kind: ComponentKind) -> list[str]:
        """Names of the registered components of one kind, sorted."""
        return sorted(name for (k, name) in self._components if k == kind)

    def get(self, kind: ComponentKind, name: str) -> Component:
        """The component ``name`` of ``kind``; ``distribution:name`` picks one of several that claim the name.
        Raises with the available names and the closest match."""
        distribution, _, plain = str(name).rpartition(":")
        claims = self._components.get((kind, plain), [])
        if distribution:
            claims = [c for c in claims if normalize_distribution(c.distribution) == normalize_distribution(distribution)]
        if len(claims) == 1:
            return claims[0]
        if claims:
            raise ComponentConflictError(self._conflict(claims))
        if distribution and self._components.get((kind, plain)):
            owners = ", ".join(sorted(c.distribution for c in self._components[(kind, plain)]))
            raise UnknownComponentError(f"no distribution {distribution!r} registers the {kind} {plain!r}; {owners} do(es)")
        available = self.names(kind)
        message = f"unknown {kind} {name!r}."
        close = difflib.get_close_matches(str(name), available, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean {close[0]!r}?"
        message += f" Available: {', '.join(available) if available else '(none: is a plugin missing?)'}."
        raise UnknownComponentError(message + self._not_loaded())

    def conflicts(self) -> list[str]:
        """One message per kind and name that several registrations claim, saying how to pick one."""
        return [self._conflict(claims) for claims in self._components.values() if len(claims) > 1]

    @staticmethod
    def _conflict(claims: list[Component]) -> str:
        kind, name = claims[0].kind, claims[0].name
        owners = sorted({f"{c.distribution} {c.version}" for c in claims})
        if len(owners) == 1:
            return (
                f"{kind} {name!r} is registered {len(claims)} times by {owners[0]}: a bug in that package "
                "(two register calls, or two of its plugins, with one name); report it to its authors."
            )
        choices = " or ".join(sorted(f"{c.distribution}:{name}" for c in claims))
        return (
            f"{kind} {name!r} is registered by more than one plugin: {' and '.join(owners)}. Say which with name: "
            f"{choices}; or uninstall one of them, or choose which load with {PLUGINS_ENV}=dist1,dist2."
        )

    def _not_loaded(self) -> str:
        """Why a component may be missing: plugins that failed to load, distributions left out."""
        notes = [f" Not loaded, and perhaps providing it: {problem}." for problem in self.problems]
        if self.excluded:
            notes.append(f" {PLUGINS_ENV} leaves out {', '.join(sorted(self.excluded))}, which provide(s) '{ENTRY_POINT_GROUP}' plugins.")
        return "".join(notes)

    def default(self, kind: ComponentKind) -> str:
        """The name of the component a plugin registered as the default of ``kind`` (with ``default=True``)."""
        defaults = [c for c in self.components(kind) if c.default]
        if len(defaults) == 1:  # qualified only when another distribution claims the same name
            component = defaults[0]
            shared = len(self._components[(kind, component.name)]) > 1
            return f"{component.distribution}:{component.name}" if shared else component.name
        if defaults:
            claims = ", ".join(f"{c.distribution}:{c.name}" for c in defaults)
            raise ComponentConflictError(
                f"more than one plugin registers a default {kind} ({claims}): name the {kind} in the spec, "
                f"or choose which plugins load with {PLUGINS_ENV}=dist1,dist2."
            )
        raise UnknownComponentError(
            f"no plugin registers a default {kind}: name one in the spec; one of: {', '.join(self.names(kind)) or '(none)'}.{self._not_loaded()}"
        )

    def defaults(self, kind: ComponentKind) -> list[str]:
        """Every component of ``kind`` registered with ``default=True``, by name: for kinds a spec lists several
        of (metrics), where each plugin may add its own to the defaults."""
        return [c.name for c in self.components(kind) if c.default]

    def resolve(self, kind: ComponentKind, config: Mapping[str, Any], where: str | None = None) -> Choice:
        """Look up ``config['name']`` and validate the other keys with the component's parameter model.

        ``where`` is the dotted path of ``config`` in its spec (default: the kind), used in errors.
        """
        where = where or kind
        if not isinstance(config, Mapping) or "name" not in config:
            raise InvalidParamsError([(f"{where}.name", f"a {kind} needs a 'name'; one of: {', '.join(self.names(kind))}")])
        component = self.get(kind, config["name"])
        try:
            params = component.params_model.model_validate({k: v for k, v in config.items() if k != "name"})
        except ValidationError as error:
            raise InvalidParamsError(pydantic_problems(error, component.params_model, where)) from None
        return Choice(component, params, qualified=":" in str(config["name"]))

    def build(self, kind: ComponentKind, config: Mapping[str, Any], *args: Any, where: str | None = None, **kwargs: Any) -> Any:
        """Resolve ``config`` and build the component, passing the extra arguments to its factory."""
        return self.resolve(kind, config, where).build(*args, **kwargs)

    @property
    def hook(self) -> Any:
        """Call a lifecycle hook on every plugin and listener: ``registry.hook.unpaired_on_epoch_end(...)``."""
        return self.plugin_manager.hook

    @contextlib.contextmanager
    def listening(self, *listeners: object) -> Iterator[None]:
        """Register objects with lifecycle hook implementations for the duration of the block, then remove them.

        This is the one way to follow a study or a run from outside a plugin: a tracker, a test
        that stops training at some step. The hookspecs say which hooks exist and when they are called.
        """
        for listener in listeners:
            self.plugin_manager.register(listener, name=f"listener-{id(listener)}")
            self.listeners.append(listener)
        try:
            yield
        finally:
            for listener in listeners:
                self.plugin_manager.unregister(listener)
                self.listeners.remove(listener)


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, loaded once per process."""
    return Registry.from_entry_points()
