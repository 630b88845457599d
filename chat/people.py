"""The people a training run saw, and the names a chat may use for them."""

import difflib
from dataclasses import dataclass, field

from core.errors import TwinError
from core.names import matching_names

CLOSEST = 3  # names offered for one that the run never saw
LISTED = 10  # names listed where none is close (a run of group chats knows hundreds)


class SpeakerError(TwinError):
    """A speaker name the chat cannot use: one the run never saw, or none where the run names nobody."""


@dataclass(frozen=True)
class People:
    """Who a run's conversations had: the person the run twins and each speaker's most frequent partner.

    Empty for a model given without its run folder: then any name goes, as there is nothing to check it by.
    """

    target: str | None = None
    partners: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_figures(cls, figures: dict) -> "People":
        """From a finished run's figures, which training.run_folder checked (its partners are names)."""
        target = figures.get("target")
        return cls(target if isinstance(target, str) else None, dict(figures.get("partners", {})))

    @property
    def names(self) -> set[str]:
        return {*self.partners, *self.partners.values(), *([self.target] if self.target else [])}

    def check(self, name: str, where: str, parts: bool = True) -> str:
        """The run's name that `name` means (core.names: exact, else in any case, else a part of one unless
        `parts` is off), or `name` itself where the run is unknown; SpeakerError naming the candidates where
        it means several people or none."""
        names = self.names
        if not names:
            return name
        matches = matching_names(name, sorted(names), parts)
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise SpeakerError(
                f"{where} {name!r}: means {len(matches)} people in this run's conversations, "
                f"{quoted(matches)}: type more of the name"
            )
        raise SpeakerError(
            f"{where} {name!r}: no one of that name in this run's conversations; {self.suggestion(name)}"
        )

    def suggestion(self, name: str) -> str:
        # Compared in lower case, as names match in any case.
        by_lower = {known.lower(): known for known in self.names}
        close = difflib.get_close_matches(name.lower(), by_lower, n=CLOSEST, cutoff=0.5)
        if close:
            return "did you mean " + " or ".join(repr(by_lower[lower]) for lower in close) + "?"
        return "the speakers are " + quoted(sorted(self.names))

    def speaker_or_target(self, speaker: str | None) -> str:
        """--speaker, checked; by default the person the run twins."""
        if speaker is not None:
            return self.check(speaker, "--speaker")
        if self.target is None:
            raise SpeakerError("--speaker: needed here, as no run record (--checkpoint) names the person to twin")
        return self.target

    def user_for(self, speaker: str, user: str | None) -> str:
        """--as, checked; by default the speaker's most frequent partner, else "User"."""
        if user is not None:
            return self.check(user, "--as")
        return self.partners.get(speaker, "User")


def quoted(names: list[str]) -> str:
    """The first LISTED names, quoted, and how many more there are."""
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(repr(name) for name in names[:LISTED]) + more
