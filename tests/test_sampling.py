"""npinfer.engine.generation.sampling and the stop-string matcher of engine.generation.request, on plain arrays and strings."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npinfer.engine.generation.sampling import (
    SamplingParams,
    adjust_logits,
    choice_rngs,
    choose,
    log_softmax,
    nucleus,
    top_logprobs,
)
from npinfer.engine.generation.stops import StopStrings


def test_penalties_follow_the_openai_formula():
    z = np.array([1.0, 2.0, 3.0, 4.0])
    counts = np.array([0, 1, 3, 0])
    out = adjust_logits(z, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), counts)
    # mu[j] - c[j] * alpha_frequency - (c[j] > 0) * alpha_presence
    np.testing.assert_allclose(out, [1.0, 2.0 - 0.25 - 0.5, 3.0 - 0.75 - 0.5, 4.0])
    np.testing.assert_array_equal(z, [1.0, 2.0, 3.0, 4.0])  # the input is not modified


def test_logit_bias_is_added_before_choosing():
    z = np.array([5.0, 0.0, 0.0])
    params = SamplingParams(temperature=0.0, logit_bias=((2, 100.0), (0, -100.0)))
    assert choose(z, params, np.zeros(3), np.random.default_rng(0)) == 2


def test_greedy_is_argmax_with_ties_to_the_lowest_id():
    z = np.array([0.0, 3.0, 3.0, 1.0])
    assert choose(z, SamplingParams(temperature=0.0), np.zeros(4), np.random.default_rng(0)) == 1


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    p = np.array([0.1, 0.5, 0.3, 0.1])
    np.testing.assert_allclose(nucleus(p, 0.5), [0, 1, 0, 0])
    np.testing.assert_allclose(nucleus(p, 0.8), [0, 0.625, 0.375, 0])
    np.testing.assert_allclose(nucleus(p, 0.81), [0.1, 0.5, 0.3, 0] / np.float64(0.9))
    np.testing.assert_allclose(nucleus(p, 1.0), p)


def test_top_p_sampling_never_draws_outside_the_nucleus():
    z = np.log(np.array([0.05, 0.6, 0.3, 0.05]))
    rng = np.random.default_rng(1)
    draws = {choose(z, SamplingParams(temperature=1.0, top_p=0.85), np.zeros(4), rng) for _ in range(300)}
    assert draws == {1, 2}


def test_temperature_sharpens_and_flattens_the_distribution():
    z = np.array([0.0, 1.0])
    counts = np.zeros(2)

    def share_of_1(t):
        rng = np.random.default_rng(0)
        return np.mean([choose(z, SamplingParams(temperature=t), counts, rng) for _ in range(4000)])

    expected = {t: 1 / (1 + np.exp(-1 / t)) for t in (0.25, 1.0, 2.0)}
    for t, p in expected.items():
        assert abs(share_of_1(t) - p) < 0.03, t


def test_log_softmax_and_top_logprobs():
    z = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    lp = log_softmax(z)
    np.testing.assert_allclose(np.exp(lp).sum(), 1.0)
    np.testing.assert_allclose(lp, z - np.log(np.exp(z.astype(np.float64)).sum()))
    assert [i for i, _ in top_logprobs(lp, 3)] == [1, 3, 2]
    assert top_logprobs(lp, 0) == []


def test_seeded_choice_generators_are_reproducible_and_distinct():
    a = [g.random() for g in choice_rngs(7, 3)]
    b = [g.random() for g in choice_rngs(7, 3)]
    assert a == b and len(set(a)) == 3
    assert a != [g.random() for g in choice_rngs(8, 3)]


# --------------------------------------------------------------------------- stop strings
def run_stops(pieces: list[str], stops: tuple[str, ...]) -> tuple[list[str], bool]:
    matcher, shown = StopStrings(stops), []
    for piece in pieces:
        shown.append(matcher.push(piece))
        if matcher.stopped:
            return shown, True
    return shown + [matcher.flush()], False


def test_a_stop_string_across_pieces_is_cut_and_never_shown():
    shown, stopped = run_stops(["Hi", "\n", "\nBye"], ("\n\n",))
    assert stopped and shown == ["Hi", "", ""]


def test_text_that_may_start_a_stop_string_is_held_back_until_it_cannot():
    shown, stopped = run_stops(["ab", "c", "d"], ("cde",))
    assert not stopped and shown == ["ab", "", "", "cd"]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc", max_size=30), cuts=st.lists(st.integers(0, 30), max_size=6),
       stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3))
def test_stop_strings_cut_exactly_where_the_text_so_far_says(text, cuts, stops):
    """Stopping is causal: generation ends at the first piece after which some stop
    string is complete, and the text is cut where the earliest complete one starts
    (a longer stop string that would have started earlier but is not finished yet
    cannot count: its end has not been generated)."""
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    shown, stopped = run_stops(pieces, tuple(stops))
    expected, expect_stop = text, False
    for end in bounds[1:]:
        hits = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if hits:
            expected, expect_stop = text[:min(hits)], True
            break
    assert "".join(shown) == expected
    assert stopped == expect_stop
