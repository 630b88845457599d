"""The figures of a fidelity report: base and tuned measured against the person's real turns and the
training split, per speaker (loss, calibrated style, real vs written) and over every context (attribution,
failures, privacy)."""

from dataclasses import dataclass, field

from data.conversion import plural
from data.dataset import PreparedData
from data.sessions import Turn
from fidelity.attribution import NgramClassifier, confusion_matrix, real_vs_generated_auc
from fidelity.calibration import MEAN, Placement, place, style_bounds
from fidelity.failures import FailureRates, failure_rates
from fidelity.measure import Measurement
from fidelity.plan import EvalSettings, Plan
from fidelity.privacy import COPY_WORDS, Memorization, PersonalDataLeak, TrainingText, memorization, personal_data_leaks
from fidelity.remembering import MemoryFigures
from fidelity.style import STATISTICS, style_statistics
from fidelity.verdict import PersonVerdict

MODELS = ("base", "tuned")
WRITERS = ("real", *MODELS)  # the person at the same contexts, as the reference for every figure
CONTEXT_TURNS_SHOWN = 3  # turns of conversation before each example's reply
CONTEXT_TURNS_READ = 3  # the turns before a reply it should pick up words from (fidelity.failures)
# A speaker with fewer contexts gets no style position: on fewer turns one odd turn moves it by more
# than the whole scale (the demo's partners, at 4 or 5 contexts each, swung by more than 1).
MIN_CONTEXTS = 8
# The verdict (SpeakerReport.verdict): the tuned model writes like the person where its style position
# is at least this, with the low end of its 95% interval above 0 (beyond doubt closer than other people),
# and its held-out loss is below the base model's; not where the whole interval is short of this, or
# the loss did not fall; partly in between.
LIKE_THEM = 0.5
VERDICT_RULE = (
    f"**yes** where the tuned model's style position is {LIKE_THEM} or more with the low end of its "
    f"95% interval above 0, and its held-out loss is below the base model's; **no** where the whole "
    f"interval is below {LIKE_THEM} or the loss did not fall; **partly** in between. A speaker with "
    f"fewer than {MIN_CONTEXTS} contexts gets no position, so no verdict: on so few turns one odd "
    "turn moves a position by more than its whole scale."
)


@dataclass
class StyleRow:
    real: float
    base: float
    tuned: float
    ceiling: float | None  # how far the person's own other turns are from the real ones (fidelity.calibration)
    floor: float | None  # how far other people's turns are
    placements: dict[str, Placement]  # model -> how far its turns are, and where that falls between the two


@dataclass
class Example:
    earlier_turns: int  # of the conversation, not shown
    context: list[Turn]  # the last turns before the reply
    real: list[str]
    tuned: list[str]


@dataclass
class SpeakerReport:
    speaker: str
    is_target: bool
    held_out_turns: int
    loss_tokens: int
    base_loss: float
    tuned_loss: float
    contexts: int
    style: dict[str, StyleRow]  # statistic name -> figures; empty without contexts
    position: dict[str, Placement | None]  # model -> mean position over the statistics that tell the person apart
    cut: dict[str, float]  # model -> share of its turns cut for running on past the person's own
    real_vs_written_auc: dict[str, float | None]  # model -> how well real turns are told from its turns
    examples: list[Example]

    @property
    def no_position(self) -> str:
        """Why the speaker has no style position; "" where they have one."""
        if not self.contexts:
            return "no held-out moment to write their turn at (--contexts 0, or each of their turns opens a session)"
        if self.contexts < MIN_CONTEXTS:
            return f"only {plural(self.contexts, 'held-out context')}, and a position needs {MIN_CONTEXTS}"
        if self.position["tuned"].position is None:
            return (
                "no style statistic tells them from other people (or there is no training turn of theirs or "
                "of others to compare with)"
            )
        return ""

    def verdict(self) -> str:
        """Whether the tuned model writes like them: yes, partly or no (LIKE_THEM); "" without a position."""
        if self.no_position:
            return ""
        tuned = self.position["tuned"]
        if tuned.position >= LIKE_THEM and tuned.low > 0 and self.tuned_loss < self.base_loss:
            return "yes"
        if tuned.high < LIKE_THEM or self.tuned_loss >= self.base_loss:
            return "no"
        return "partly"

    def glance(self) -> str:
        """One line: the verdict and the figures that decide it, or why there is none."""
        if self.no_position:
            return f"{self.title}: no verdict, {self.no_position}"
        tuned, base = self.position["tuned"], self.position["base"]
        reasons = [
            reason
            for reason, holds in (
                ("the held-out loss did not fall", self.tuned_loss >= self.base_loss),
                (f"the position is under {LIKE_THEM}", tuned.position < LIKE_THEM),
                ("its interval reaches 0", tuned.low <= 0),
            )
            if holds
        ]
        verdict = self.verdict() + (f" ({'; '.join(reasons)})" if reasons else "")
        return (
            f"{self.title}: writes like them: {verdict}: style position {tuned.position:.2f} "
            f"(95% {tuned.low:.2f} to {tuned.high:.2f}; base {base.position:.2f}), held-out loss "
            f"{self.base_loss:.3f} → {self.tuned_loss:.3f}, turns cut for running on {self.cut['tuned']:.0%}"
        )

    @property
    def title(self) -> str:
        return f"{self.speaker} (target)" if self.is_target else self.speaker

    def closer_than_base(self) -> dict[str, int]:
        """On how many style statistics the tuned model's turns are closer to the real ones than the base
        model's, as close (the same distance: often both exactly right), and farther."""
        distances = [(row.placements["tuned"].distance, row.placements["base"].distance) for row in self.style.values()]
        return {
            "closer": sum(tuned < base for tuned, base in distances),
            "as_close": sum(tuned == base for tuned, base in distances),
            "farther": sum(tuned > base for tuned, base in distances),
        }

    def style_verdict(self) -> str:
        """E.g. "closer than base on 5 of 8 style statistics, farther on 1"; "" without contexts."""
        if not self.style:
            return ""
        counts = self.closer_than_base()
        return (
            f"closer than base on {counts['closer']} of {len(self.style)} style statistics, "
            f"farther on {counts['farther']}"
        )


@dataclass
class Attribution:
    classes: list[str]  # the speakers the classifier knows (those with turns in the training split)
    confusion: dict[str, dict[str, dict[str, int]]]  # writer -> speaker written as -> class -> turns

    def share(self, writer: str, speaker: str) -> float | None:
        """The share of the turns written as `speaker` that the classifier gives to them."""
        row = self.confusion[writer].get(speaker, {})
        total = sum(row.values())
        return row.get(speaker, 0) / total if total and speaker in self.classes else None


@dataclass
class Report:
    speakers: list[SpeakerReport]
    held_out_sessions: int
    attribution: Attribution | None  # None when fewer than two speakers have training turns
    failures: dict[str, FailureRates]  # writer -> over all contexts
    memorization: dict[str, Memorization]  # writer -> over all contexts
    personal_data: dict[str, dict[str, PersonalDataLeak]]  # writer -> kind -> counts
    cut: dict[str, float]  # model -> share of its turns cut for running on past the person's own (measure.py)
    about: dict  # what was evaluated, and how
    verdict: list[PersonVerdict] = field(default_factory=list)  # the blind test's judges, where any answered
    memory: MemoryFigures | None = None  # the tuned model without and with its memory, where the run has one

    def summary(self) -> str:
        lines = [f"fidelity, base → tuned (held-out sessions: {self.held_out_sessions}):"]
        lines += [f"  {speaker.glance()}" for speaker in self.speakers]
        for speaker in self.speakers:
            figures = [f"loss {speaker.base_loss:.3f} → {speaker.tuned_loss:.3f}"]
            if speaker.style:
                figures.append(speaker.style_verdict())
            if self.attribution and speaker.style:
                figures.append(
                    "attributed to them "
                    + " → ".join(percent(self.attribution.share(model, speaker.speaker)) for model in MODELS)
                )
            figures.append(f"contexts: {speaker.contexts}")
            lines.append(f"  {speaker.title}: {', '.join(figures)}")
        tuned = self.failures["tuned"]
        lines.append(
            f"  tuned model: assistant talk {tuned.assistant_leaks:.0%}, refusals {tuned.refusals:.0%}, "
            f"empty {tuned.empty:.0%}, copies of {COPY_WORDS}+ training words "
            f"{self.memorization['tuned'].copying_share:.0%}, personal values from training "
            f"{sum(leak.values_leaked for leak in self.personal_data['tuned'].values())}"
        )
        for person in self.verdict:
            lines.append(
                f"  people's verdict on {person.speaker}: the twin's turn taken for the real one in "
                f"{percent(person.share)} of {person.twin_taken + person.real_taken} pairs decided "
                f"({person.judges} judges)"
            )
        return "\n".join(lines + (self.memory.summary() if self.memory else []))


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def compare(
    plan: Plan,
    data: PreparedData,
    base: Measurement,
    tuned: Measurement,
    settings: EvalSettings,
    about: dict,
    verdict: list[PersonVerdict] | None = None,
) -> Report:
    written = {
        "real": {speaker: [context.real for context in plan.contexts[speaker]] for speaker in plan.speakers},
        "base": base.replies,
        "tuned": tuned.replies,
    }
    speakers = [speaker_report(speaker, plan, data, base, tuned, written, settings) for speaker in plan.speakers]

    # Failures and privacy, over every context of every speaker.
    everywhere = {
        writer: [turn for speaker in plan.speakers for turn in written[writer][speaker]] for writer in WRITERS
    }
    conversations = [
        [message for turn in context.turns[-CONTEXT_TURNS_READ:] for message in turn.messages]
        for speaker in plan.speakers
        for context in plan.contexts[speaker]
    ]
    training = TrainingText([turn.messages for session in data.train_sessions for turn in session.turns])
    return Report(
        speakers,
        len(data.val_sessions),
        attribute(plan, written),
        failures={
            writer: failure_rates(turns, everywhere["real"], conversations) for writer, turns in everywhere.items()
        },
        memorization={writer: memorization(training, turns) for writer, turns in everywhere.items()},
        personal_data={writer: personal_data_leaks(training, turns) for writer, turns in everywhere.items()},
        cut={
            model: cut_share([cut for speaker in plan.speakers for cut in measured.cut[speaker]])
            for model, measured in zip(MODELS, (base, tuned))
        },
        about=about,
        verdict=verdict or [],
    )


def speaker_report(
    speaker: str,
    plan: Plan,
    data: PreparedData,
    base: Measurement,
    tuned: Measurement,
    written: dict[str, dict[str, list[list[str]]]],
    settings: EvalSettings,
) -> SpeakerReport:
    contexts, real = plan.contexts[speaker], written["real"][speaker]
    style, position, auc = {}, dict.fromkeys(MODELS), dict.fromkeys(MODELS)
    if len(contexts) >= MIN_CONTEXTS:
        bounds = style_bounds(real, plan.own_turns[speaker], plan.others_turns[speaker], settings.seed)
        placements = {model: place(written[model][speaker], real, bounds, settings.seed) for model in MODELS}
        values = {writer: style_statistics(written[writer][speaker]) for writer in WRITERS}
        style = {
            statistic.name: StyleRow(
                *(values[writer][statistic.name] for writer in WRITERS),
                bounds[statistic.name].ceiling,
                bounds[statistic.name].floor,
                {model: placements[model][statistic.name] for model in MODELS},
            )
            for statistic in STATISTICS
        }
        position = {model: placements[model][MEAN] for model in MODELS}
        auc = {model: real_vs_generated_auc(real, written[model][speaker], settings.seed) for model in MODELS}
    examples = [
        Example(
            max(0, len(context.turns) - CONTEXT_TURNS_SHOWN), context.turns[-CONTEXT_TURNS_SHOWN:], context.real, reply
        )
        for context, reply in zip(contexts[: settings.examples], tuned.replies[speaker])
    ]
    return SpeakerReport(
        speaker,
        speaker == data.target,
        plan.held_out_turns[speaker],
        tuned.tokens[speaker],
        base.loss[speaker],
        tuned.loss[speaker],
        len(contexts),
        style,
        position,
        {model: cut_share(measured.cut[speaker]) for model, measured in zip(MODELS, (base, tuned))},
        auc,
        examples,
    )


def cut_share(cut: list[bool]) -> float:
    return sum(cut) / len(cut) if cut else 0.0


def attribute(plan: Plan, written: dict[str, dict[str, list[list[str]]]]) -> Attribution | None:
    """Who the classifier, fitted on the evaluated speakers' training turns, says wrote each turn."""
    known = {speaker: plan.own_turns[speaker] for speaker in plan.speakers if plan.own_turns[speaker]}
    if len(known) < 2:
        return None
    classifier = NgramClassifier(known)
    return Attribution(
        classifier.classes, {writer: confusion_matrix(classifier, written[writer]) for writer in WRITERS}
    )
