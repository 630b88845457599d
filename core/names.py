"""Which person a name that someone typed means: one rule for every flag, command and request that names
one (--target, --speaker, --as, /speaker, /as, the server's `model` and `name`)."""

from collections.abc import Iterable


def matching_names(wanted: str, names: Iterable[str], parts: bool = True) -> list[str]:
    """The names `wanted` may mean: the one equal to it; else those equal to it in any case; else those
    holding it in any case ("ov" holds in "Ivanov" and "Petrov"), unless `parts` is off. One name is the
    answer; several or none is for the caller to refuse, naming them or the closest."""
    names = list(dict.fromkeys(names))
    if wanted in names:
        return [wanted]
    folded = _folded(wanted)
    if not folded:
        return []
    same = [name for name in names if _folded(name) == folded]
    return same or [name for name in names if parts and folded in _folded(name)]


def _folded(name: str) -> str:
    """In any case, runs of spaces as one ("alexander  SMIRNOV" is "alexander smirnov")."""
    return " ".join(name.casefold().split())
