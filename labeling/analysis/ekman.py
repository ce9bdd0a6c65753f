"""The emotion implied by Action Units: Ekman & Friesen's patterns (seed 002, Fig. 1c).

    emotion_from_aus({6, 12}, measured=SEED_AUS)          # "happy"
    emotion_from_aus(set(), measured=SEED_AUS)            # "neutral": no AU present
    emotion_from_aus({25}, measured=SEED_AUS)             # None: present AUs, no pattern

A pattern is a list of requirements, each satisfied by any one of its AUs (surprise takes AU26 or
AU27). An AU model measures only some AUs (the seeds' 8: 1 2 4 6 9 12 25 26), so a pattern is
judged on the AUs it requires that the model measures: it matches when every one of those is
present, and it can only match when at least `MIN_MEASURED` of its requirements are measured (so
that a lone AU4 never reads as anger). The largest matching pattern wins (fear's 1+2+4+26 over
surprise's 1+2+26, surprise over sadness's 1+4), ties in EKMAN_RULES' order. With the seeds' 8
AUs: happy 6+12, sad 1+4 (15 unmeasured), surprise 1+2+26 (5 unmeasured), fear 1+2+4+26 (5 and
20 unmeasured); disgust (9 of 9+15+16) and anger (4 of 4+5+7+23) cannot be told.

The demo data's labels (ferlab.demodata.emotion_from_aus) follow the same patterns over the
AUs it renders, judged on intensities; this one judges presence from a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# emotion -> requirements; a requirement is met by any one of its AUs
EKMAN_RULES: Mapping[str, tuple[frozenset[int], ...]] = {
    "happy": (frozenset({6}), frozenset({12})),
    "sad": (frozenset({1}), frozenset({4}), frozenset({15})),
    "surprise": (frozenset({1}), frozenset({2}), frozenset({5}), frozenset({26, 27})),
    "disgust": (frozenset({9}), frozenset({15}), frozenset({16})),
    "angry": (frozenset({4}), frozenset({5}), frozenset({7}), frozenset({23})),
    "fear": (
        frozenset({1}),
        frozenset({2}),
        frozenset({4}),
        frozenset({5}),
        frozenset({20}),
        frozenset({26, 27}),
    ),
}
MIN_MEASURED = 2  # requirements a pattern needs measured before it can match


def decidable(measured: Iterable[int], min_measured: int = MIN_MEASURED) -> list[str]:
    """The emotions `emotion_from_aus` can name from these measured AUs."""
    have = set(measured)
    return [e for e, reqs in EKMAN_RULES.items() if sum(bool(r & have) for r in reqs) >= min_measured]


def emotion_from_aus(
    present: Iterable[int], measured: Iterable[int] | None = None, min_measured: int = MIN_MEASURED
) -> str | None:
    """The emotion the present AUs imply: "neutral" when none of the measured AUs is present, the
    largest matching pattern's emotion, or None when AUs are present but no pattern matches.
    `measured`: the AUs that were judged (default: every AU, i.e. full patterns only)."""
    on = set(present)
    have = None if measured is None else set(measured)
    if have is not None:
        on &= have
    if not on:
        return "neutral"
    best, best_size = None, 0
    for emotion, reqs in EKMAN_RULES.items():
        judged = reqs if have is None else [r & have for r in reqs if r & have]
        if len(judged) < min(min_measured, len(reqs)) or not all(r & on for r in judged):
            continue
        if len(judged) > best_size:
            best, best_size = emotion, len(judged)
    return best
