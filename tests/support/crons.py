"""Hypothesis strategies for cron expressions of the accepted dialect (SPEC §3.1), shared by the tests of
the parser and of the schedule maths."""

from __future__ import annotations

from hypothesis import strategies as st


def field(low: int, high: int) -> st.SearchStrategy[str]:
    """One field: `*`, `*/k`, a value, a range, a stepped range or a list, within [low, high]."""
    value = st.integers(low, high)
    ranged = st.integers(low, high - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, high)))
    step = st.integers(1, high - low + 1)
    return st.one_of(
        st.just("*"),
        step.map(lambda k: f"*/{k}"),
        value.map(str),
        ranged.map(lambda ab: f"{ab[0]}-{ab[1]}"),
        st.tuples(ranged, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
        st.lists(value, min_size=2, max_size=4, unique=True).map(lambda vs: ",".join(map(str, vs))),
    )


# Day-of-month stays <= 28 so that every generated expression can fire.
CRON_EXPRESSIONS = st.one_of(
    st.tuples(field(0, 59), field(0, 23), field(1, 28), field(1, 12), field(0, 7)),
    st.tuples(field(0, 59), field(0, 59), field(0, 23), field(1, 28), field(1, 12), field(0, 7)),
).map(" ".join)
"""5-field and 6-field (seconds first) expressions."""
