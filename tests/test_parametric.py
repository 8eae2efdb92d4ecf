import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.base import Response
from simulators.parametric import ParametricUserModel, WorldConfig


def _world(n=4):
    w = ParametricUserModel(WorldConfig(num_items=60, num_topics=6, population_size=50, seed=1))
    w.start_sessions(np.arange(n), w.population[:n])
    return w


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8))
def test_marginal_and_conditional_probs_are_distributions(seed, k):
    w = _world()
    rng = np.random.default_rng(seed)
    slates = np.stack([rng.choice(60, k, replace=False) for _ in range(4)])
    marg = w.response_probs(np.arange(4), slates)
    assert marg.shape == (4, k, 3)
    assert np.all(marg >= 0) and np.allclose(marg.sum(-1), 1.0)
    resp = rng.integers(0, 3, (4, k))
    cond = w.conditional_response_probs(np.arange(4), slates, resp)
    assert np.all(cond >= -1e-12) and np.allclose(cond.sum(-1), 1.0)


def test_conditionals_multiply_to_the_marginal_of_a_single_click():
    w = _world(1)
    slate = np.array([[3, 7, 11]])
    marg = w.response_probs([0], slate)[0]
    # P(first click at slot 2) = P(skip 0) P(skip 1 | skip 0) P(click-or-buy 2 | skips)
    resp = np.array([[Response.SKIP, Response.SKIP, Response.CLICK]])
    cond = w.conditional_response_probs([0], slate, resp)[0]
    p_click_slot2 = cond[0, 0] * cond[1, 0] * (1 - cond[2, 0])
    assert np.isclose(p_click_slot2, 1 - marg[2, 0])


def test_at_most_one_click_per_slate_and_deterministic_sampling():
    w1, w2 = _world(), _world()
    rng = np.random.default_rng(0)
    for _ in range(20):
        slates = np.stack([rng.choice(60, 5, replace=False) for _ in range(4)])
        u = rng.random((4, 6))
        o1, o2 = w1.step(np.arange(4), slates, u), w2.step(np.arange(4), slates, u)
        assert np.array_equal(o1.responses, o2.responses)
        assert np.array_equal(o1.leave, o2.leave)
        assert ((o1.responses != Response.SKIP).sum(axis=1) <= 1).all()


def test_state_is_a_function_of_profile_and_history():
    w = _world()
    u_a, ps_a = w.initial_state(w.population[:4])
    u_b, ps_b = w.initial_state(w.population[:4].copy())
    assert np.array_equal(u_a, u_b) and np.array_equal(ps_a, ps_b)


def test_tables_have_titles_topics_and_prices():
    w = ParametricUserModel()
    items = w.items_table()
    assert len(items) == 500 and items["category"].nunique() == 20
    assert items["title"].str.len().min() > 5 and (items["price"] > 0).all()
    users = w.users_table(["a", "b"], w.population[:2])
    assert list(users.columns) == ["user_id", "age_band", "gender", "region", "interests"]
