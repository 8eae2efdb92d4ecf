"""Logging policies of generate-logs: what each shows, and that they are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from recsim_env.log_generation import (
    PERSONALIZED,
    POPULAR,
    RANDOM,
    generate,
    row_kinds,
    user_appeal,
)
from simulators.logs import InteractionLogs
from tests.conftest import TINY_ENV


def _first_slate_appeal(logs: InteractionLogs, world) -> float:
    """Mean appeal (to the user) of the items of each session's first slate."""
    first = logs.steps[logs.steps["step"] == 0].set_index("user_id")
    users = logs.users.set_index("user_id").loc[first.index].reset_index()
    appeal = user_appeal(world, world.profile_encoder.encode(users))
    items = np.array([[int(i[1:]) for i in row] for row in first["items"]])
    return float(np.take_along_axis(appeal, items, axis=1).mean())


def test_personalized_slates_lean_to_the_users_tastes(tiny_world):
    random = generate(200, "random", 5, TINY_ENV, tiny_world)
    personal = generate(200, "personalized", 5, TINY_ENV, tiny_world)
    assert _first_slate_appeal(personal, tiny_world) > _first_slate_appeal(random, tiny_world) + 0.3


def test_varied_gives_a_third_of_users_each_policy():
    kinds = row_kinds("varied", np.arange(3000, dtype=np.uint64) * np.uint64(7919))
    counts = np.bincount(kinds, minlength=3)
    assert set(np.unique(kinds)) == {RANDOM, POPULAR, PERSONALIZED}
    assert (np.abs(counts - 1000) < 60).all()
    mixed = row_kinds("mixed", np.arange(10, dtype=np.uint64))
    assert set(np.unique(mixed)) == {RANDOM, POPULAR}


@pytest.mark.parametrize("policy", ["personalized", "varied"])
def test_new_policies_are_reproducible(tiny_world, policy):
    a = generate(40, policy, 11, TINY_ENV, tiny_world)
    b = generate(40, policy, 11, TINY_ENV, tiny_world)
    assert a.steps.equals(b.steps)
    assert a.meta["policy"] == policy


def test_unknown_policy_names_the_allowed_ones(tiny_world):
    with pytest.raises(ValueError, match="personalized"):
        generate(5, "greedy", 0, TINY_ENV, tiny_world)
