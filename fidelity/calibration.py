"""Where a model's style falls between other people (the floor) and the person themselves (the ceiling).

A distance between a model's turns and the person's real held-out turns (fidelity.style) means little
alone: 0.3 apart in characters per message may be as close as the person's own turns ever come to
each other, or as far as a stranger. So each statistic gets two reference distances from the same
held-out turns, each averaged over many random draws of as many turns as there are held-out ones:
  - the ceiling: the person's other real turns (those of the training split);
  - the floor: other people's real turns.
A model's position is (floor - distance) / (floor - ceiling): 0 at the floor, 1 at the ceiling, above
1 closer than the person's own other turns (a copy of the held-out turns is at distance 0), below 0
farther than other people. Its confidence interval resamples the contexts: the held-out turns and the
model's turns at the same contexts, in pairs.
"""

from dataclasses import dataclass

import numpy as np

from fidelity.style import STATISTICS, counts_table, statistics_of_counts, style_distance

# A statistic on which other people are less than this much farther from the person than the person's
# own other turns does not tell them apart: no position is given on it (it would divide by ~0).
MIN_GAP = 0.05
REFERENCE_DRAWS = 200
RESAMPLES = 1000
INTERVAL = (2.5, 97.5)  # percentiles: a 95% interval
MEAN = "mean"  # place()'s key for the mean over the statistics that separate the person from others


@dataclass
class Bounds:
    """One statistic's reference distances for one person; None where there was nothing to draw from."""

    ceiling: float | None
    floor: float | None

    @property
    def separates(self) -> bool:
        return self.ceiling is not None and self.floor is not None and self.floor - self.ceiling >= MIN_GAP

    def position(self, distance):
        return (self.floor - distance) / (self.floor - self.ceiling)


@dataclass
class Placement:
    """Where one model's turns fall on one statistic."""

    distance: float  # from the held-out turns, as fidelity.style.style_distance
    position: float | None  # None where the statistic does not separate the person from others
    low: float | None  # the 95% bootstrap interval of the position
    high: float | None


def style_bounds(real: list[list[str]], own: list[list[str]], others: list[list[str]], seed: int) -> dict[str, Bounds]:
    """Ceiling and floor of every statistic for the person whose held-out turns are `real`, from
    their other turns `own` and other people's turns `others`."""
    rng = np.random.default_rng(seed)
    real_values = statistics_of_counts(counts_table(real).sum(axis=0))

    def mean_distances(pool: list[list[str]]) -> list[float | None]:
        if not pool or not real:
            return [None] * len(STATISTICS)
        draws = counts_table(pool)[rng.integers(0, len(pool), size=(REFERENCE_DRAWS, len(real)))]
        values = statistics_of_counts(draws.sum(axis=1))
        return [
            float(np.mean(style_distance(statistic, values[:, column], real_values[column])))
            for column, statistic in enumerate(STATISTICS)
        ]

    ceilings, floors = mean_distances(own), mean_distances(others)
    return {statistic.name: Bounds(ceiling, floor) for statistic, ceiling, floor in zip(STATISTICS, ceilings, floors)}


def place(
    replies: list[list[str]], real: list[list[str]], bounds: dict[str, Bounds], seed: int
) -> dict[str, Placement]:
    """Every statistic's distance and position of `replies`, written at the contexts of `real`, and under
    MEAN the mean position over the statistics that separate the person from others (None without one),
    its interval from the same resamples of the contexts."""
    if len(replies) != len(real) or not real:
        raise ValueError(f"need one reply per held-out turn, and some: {len(replies)} replies, {len(real)} turns")
    reply_counts, real_counts = counts_table(replies), counts_table(real)
    resampled = np.random.default_rng(seed).integers(0, len(real), size=(RESAMPLES, len(real)))
    reply_values, real_values = (statistics_of_counts(counts.sum(axis=0)) for counts in (reply_counts, real_counts))
    reply_resampled, real_resampled = (
        statistics_of_counts(counts[resampled].sum(axis=1)) for counts in (reply_counts, real_counts)
    )
    placements, resampled_positions = {}, []
    for column, statistic in enumerate(STATISTICS):
        distance = style_distance(statistic, reply_values[column], real_values[column])
        bound = bounds[statistic.name]
        if not bound.separates:
            placements[statistic.name] = Placement(distance, None, None, None)
            continue
        positions = bound.position(style_distance(statistic, reply_resampled[:, column], real_resampled[:, column]))
        resampled_positions.append(positions)
        placements[statistic.name] = Placement(
            distance, float(bound.position(distance)), *map(float, np.percentile(positions, INTERVAL))
        )
    separating = [placement for placement in placements.values() if placement.position is not None]
    mean = (
        Placement(
            float(np.mean([placement.distance for placement in separating])),
            float(np.mean([placement.position for placement in separating])),
            *map(float, np.percentile(np.mean(resampled_positions, axis=0), INTERVAL)),
        )
        if separating
        else Placement(0.0, None, None, None)
    )
    return {**placements, MEAN: mean}


def mean_position(placements: dict[str, Placement]) -> float | None:
    """The mean position over the statistics that separate the person from others; None if none does."""
    return placements[MEAN].position
