"""The TorchRL env and the device-side session state: specs, partial resets, parity with the
NumPy envs (the same users, candidates and answers), and the torch random streams."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import recsim_env  # noqa: F401
from recsim_env.tensor_sessions import dedupe_slates, first_keys, top_k_tensor
from simulators.rng import (
    distinct_choices,
    keys_to_torch,
    splitmix64,
    torch_distinct_choices,
    torch_splitmix64,
    torch_uniforms,
    uniforms,
)

WORLD = {"num_items": 50, "num_topics": 5, "population_size": 100}
SMALL = {"slate_size": 3, "num_candidates": 8, "history_length": 4}


def test_torch_streams_are_bit_identical_to_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, 5000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    got = torch_splitmix64(keys_to_torch(x)).numpy().view(np.uint64)
    assert np.array_equal(got, splitmix64(x))
    keys, ctr = x[:300], rng.integers(0, 10**6, 300).astype(np.uint64)
    want = uniforms(keys, ctr.copy(), 7)
    ctr_t = torch.from_numpy(ctr.astype(np.int64))
    assert np.array_equal(torch_uniforms(keys_to_torch(keys), ctr_t, 7).numpy(), want)
    assert np.array_equal(ctr_t.numpy(), ctr.astype(np.int64) + 7)  # advanced in place
    c_np, c_t = ctr.copy(), torch.from_numpy(ctr.astype(np.int64))
    picks = distinct_choices(keys, c_np, 20, 8)  # small population: many redraw rounds
    assert np.array_equal(torch_distinct_choices(keys_to_torch(keys), c_t, 20, 8).numpy(), picks)
    assert np.array_equal(c_t.numpy(), c_np.astype(np.int64))


def test_device_dedupe_and_top_k_follow_the_numpy_rules() -> None:
    from recsim_env.config import EnvConfig
    from recsim_env.sessions import top_k_slates, validate_actions

    cfg = EnvConfig(slate_size=4, num_candidates=6, action_mode="slate")
    acts = np.array([[3, 3, 1, 3], [0, 1, 2, 3], [5, 5, 5, 5]])
    want = validate_actions(acts, 3, cfg)
    got, dup = dedupe_slates(torch.as_tensor(acts), 6)
    assert np.array_equal(got.numpy(), want)
    assert dup.numpy().tolist()[0] == [False, True, False, True]
    scores = np.array([[0.1, 0.5, 0.5, -1.0, 0.9, 0.0]], dtype=np.float32)
    assert top_k_tensor(torch.as_tensor(scores), 3).tolist() == top_k_slates(scores, 3).tolist()


def _parity(env_id: str, kwargs: dict, steps: int = 12) -> int:
    """Step the TorchRL env and the NumPy vector env with the same actions; rows are compared
    until their first episode ends. Returns the row-steps compared."""
    from recsim_env.torchrl_env import make_torchrl_env

    n = 4
    env = make_torchrl_env(env_id, num_envs=n, seed=7, **kwargs)
    vec = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    td = env.reset()
    obs, _ = vec.reset(seed=7)
    rng = np.random.default_rng(1)
    alive = np.ones(n, dtype=bool)
    compared = 0
    for key in obs:
        assert np.allclose(td[key].reshape(n, -1).numpy(), obs[key].reshape(n, -1)), key
    mode = kwargs.get("action_mode", "slate")
    for _ in range(steps):
        if mode == "weights":
            width = vec.single_action_space.shape[0]
            action = rng.uniform(-1, 1, (n, width)).astype(np.float32)
        else:
            action = np.stack([rng.permutation(SMALL["num_candidates"])[:3] for _ in range(n)])
            action[0, 1] = action[0, 0]  # a repeat: deduped the same way on both sides
        td["action"] = torch.as_tensor(action)
        nxt = env.step(td)["next"]
        obs, reward, term, trunc, info = vec.step(action)
        a = alive
        assert np.array_equal(nxt["info", "slate"].numpy()[a], info["slate"][a])
        assert np.array_equal(nxt["info", "responses"].numpy()[a], info["responses"][a])
        assert np.allclose(nxt["reward"][:, 0].numpy()[a], reward[a])
        assert np.array_equal(nxt["terminated"][:, 0].numpy()[a], term[a])
        assert np.array_equal(nxt["truncated"][:, 0].numpy()[a], trunc[a])
        for key in obs:
            got = nxt[key].reshape(n, -1).numpy()
            assert np.allclose(got[a], obs[key].reshape(n, -1)[a], atol=1e-6), key
        compared += int(a.sum())
        alive = alive & ~(term | trunc)
        td = env.step_mdp(td.set("next", nxt))
        if not alive.any():
            break
    env.close()
    vec.close()
    return compared


@pytest.mark.parametrize("mode", ["slate", "weights"])
def test_parametric_users_match_the_numpy_vector_env(mode) -> None:
    kw = {"world": WORLD, **SMALL, "include_item_ids": True, "action_mode": mode}
    assert _parity("ParametricUserSim-v0", kw) > 8


@pytest.mark.parametrize("fixture", ["tiny_sim_dir", "tiny_recency_summary_sim_dir"])
def test_gpt2_users_match_the_numpy_vector_env(fixture, request) -> None:
    path = str(request.getfixturevalue(fixture))
    assert _parity("LLMUserSim-v0", {"simulator": path, **SMALL, "action_mode": "slate"}) > 8


def test_check_env_specs_passes_in_both_action_modes(tiny_sim_dir) -> None:
    from torchrl.envs.utils import check_env_specs

    from recsim_env.torchrl_env import make_torchrl_env

    for env_id, kw in (
        ("ParametricUserSim-v0", {"world": WORLD, "include_item_ids": True}),
        ("LLMUserSim-v0", {"simulator": str(tiny_sim_dir), "action_mode": "scores"}),
    ):
        env = make_torchrl_env(env_id, num_envs=3, **kw, **SMALL)
        check_env_specs(env, seed=0)
        if kw.get("action_mode") == "scores":
            td = env.rand_step(env.reset())
            shown = td["next", "info", "slate"]
            top = torch.argsort(-td["action"], dim=1, stable=True)[:, :3]
            assert torch.equal(shown, top)  # the top k scores, best first


def test_partial_reset_restarts_only_the_masked_rows(tiny_sim_dir) -> None:
    from recsim_env.torchrl_env import make_torchrl_env

    env = make_torchrl_env(
        "LLMUserSim-v0",
        num_envs=4,
        seed=0,
        simulator=str(tiny_sim_dir),
        observation="full",
        **SMALL,
    )
    td = env.reset()
    for _ in range(3):
        td = env.step_mdp(env.rand_step(td))
    before = env._batch.steps.clone()
    keys = env._batch.keys.clone()
    td.set("_reset", torch.tensor([[True], [False], [True], [False]]))
    out = env.reset(td)
    assert env._batch.steps.tolist() == [0, int(before[1]), 0, int(before[3])]
    assert torch.equal(env._batch.keys[[1, 3]], keys[[1, 3]])  # untouched rows keep their user
    assert not torch.equal(env._batch.keys[[0, 2]], keys[[0, 2]])  # the next user
    assert torch.equal(out["history_responses"][1], td["history_responses"][1])
    assert (out["history_responses"][0] == -1).all()


def test_rollout_collector_and_ppo_loss_run() -> None:
    import torch.distributions as D
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.modules import ProbabilisticActor, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    from recsim_env.torchrl_env import make_torchrl_env

    env = make_torchrl_env(
        "ParametricUserSim-v0", num_envs=4, seed=1, world=WORLD, action_mode="slate", **SMALL
    )
    c, k = SMALL["num_candidates"], SMALL["slate_size"]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(env._batch.num_features, 1)

        def forward(self, feats: torch.Tensor) -> torch.Tensor:
            s = self.lin(feats).squeeze(-1)  # (..., C)
            return s.unsqueeze(-2).expand(*s.shape[:-1], k, c)

    class Slots(D.Independent):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__(D.Categorical(logits=logits), 1)

        @property
        def deterministic_sample(self) -> torch.Tensor:
            return self.base_dist.logits.argmax(-1)

    net = Logits()
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["candidate_features"], out_keys=["logits"]),
        in_keys=["logits"],
        spec=env.action_spec,
        distribution_class=Slots,
        return_log_prob=True,
    )
    value = ValueOperator(torch.nn.Linear(2, 1), in_keys=["session_features"])
    collector = Collector(
        env, actor, frames_per_batch=32, total_frames=32, auto_register_policy_transforms=False
    )
    data = next(iter(collector))
    collector.shutdown()
    assert data.batch_size == (4, 8)
    GAE(gamma=0.9, lmbda=0.9, value_network=value)(data)
    loss = ClipPPOLoss(actor, value)(data.reshape(-1))
    total = loss["loss_objective"] + loss["loss_critic"]
    total.backward()
    assert torch.isfinite(total)
    assert net.lin.weight.grad.abs().sum() > 0  # the actor is trained


def test_first_keys_are_the_single_envs_users() -> None:
    env = gym.make("ParametricUserSim-v0", world=WORLD, **SMALL)
    env.reset(seed=42)
    assert int(env.unwrapped._batch.keys[0]) == int(first_keys([42])[0])


def test_make_torchrl_env_rejects_what_it_does_not_know() -> None:
    from recsim_env.torchrl_env import make_torchrl_env

    with pytest.raises(TypeError, match="unexpected keyword argument 'frameskip'"):
        make_torchrl_env("ParametricUserSim-v0", num_envs=2, frameskip=1)
    with pytest.raises(ValueError, match="unknown env id"):
        make_torchrl_env("CartPole-v1", num_envs=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_env_matches_cpu_and_stays_on_the_device(tiny_recency_summary_sim_dir) -> None:
    from torchrl.envs.utils import check_env_specs

    from recsim_env.torchrl_env import make_torchrl_env

    kw = {"simulator": str(tiny_recency_summary_sim_dir), "action_mode": "slate", **SMALL}
    gpu = make_torchrl_env("LLMUserSim-v0", num_envs=64, device="cuda", seed=3, **kw)
    cpu = make_torchrl_env("LLMUserSim-v0", num_envs=64, device="cpu", seed=3, **kw)
    check_env_specs(make_torchrl_env("LLMUserSim-v0", num_envs=8, device="cuda", **kw), seed=0)
    tg, tc = gpu.reset(), cpu.reset()
    assert all(v.device.type == "cuda" for v in tg.values(include_nested=True, leaves_only=True))
    for key in ("candidate_features", "profile"):  # the same users and candidates
        assert torch.allclose(tg[key].cpu(), tc[key])
    torch.manual_seed(0)
    a = torch.stack([torch.randperm(8)[:3] for _ in range(64)])
    tg = gpu.step(tg.set("action", a.cuda()))
    tc = cpu.step(tc.set("action", a))
    assert tg["next", "reward"].device.type == "cuda"
    same = (tg["next", "info", "responses"].cpu() == tc["next", "info", "responses"]).float()
    assert same.mean() > 0.97  # float32 kernels of another device: rare flips at a threshold
    ro = gpu.rollout(20, break_when_any_done=False)
    assert ro["next", "done"].device.type == "cuda" and ro["next", "done"].any()
