"""What the registries (defenses, attacks, hardening recipes) share: each module of a package registers itself."""
import importlib
import pkgutil


def import_submodules(package: str, path) -> None:
    """Import every module of `package` (its `__name__` and `__path__`), so each runs its `@register`."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
