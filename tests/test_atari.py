"""Atari pipeline: preprocessing, the actor and evaluation env paths, CNN sizes, uint8 through the
store, and one in-process collector on Pong. Real emulator, real Redis; a few hundred steps each."""
import numpy as np
import pytest
import torch

from kd_system.envs.atari import (OBS_SHAPE, RAW_SCORE, TEACHER_TRAINING, SingleAtariEnv, AtariSettings,
                             make_atari_vector_env)
from kd_system.policies.network_choice import student_network_for
from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.envs.make import check_env_id, env_spaces, make_env, make_vector_env
from kd_system.errors import CheckpointError, ConfigError
from kd_system.evaluation.episodes import eval_epsilon, random_act_fn, run_episodes
from kd_system.policies.networks import CNN_PRESETS, build_network, cnn_spec, count_parameters
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable
from kd_system.types import ChunkMeta, LabelledChunk, LabelledStates
from kd_system.replay.codec import encode_chunk

PONG = "ALE/Pong-v5"


def random_actions(rng, num_actions, count):
    return rng.integers(0, num_actions, size=count).astype(np.int64)


def test_spaces_and_observations_are_uint8_stacks_of_84x84_frames():
    spaces = env_spaces(PONG)
    assert spaces.obs_shape == OBS_SHAPE == (4, 84, 84)
    assert spaces.obs_dtype == "uint8" and spaces.num_actions == 6  # Pong's minimal action set
    vec = make_vector_env(PONG, 2, seed=0)
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    obs, rewards, terminated, truncated, _ = vec.step(np.zeros(2, np.int64))
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert rewards.shape == terminated.shape == truncated.shape == (2,)
    env = make_env(PONG, seed=0)
    single, _ = env.reset(seed=0)
    assert single.shape == (4, 84, 84) and single.dtype == np.uint8
    env.close()


def test_frame_stack_shifts_and_puts_the_newest_frame_last():
    env = SingleAtariEnv(PONG, AtariSettings(noop_max=0, repeat_action_probability=0.0))
    previous, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    changed_newest = 0
    for _ in range(120):
        obs, *_ = env.step(int(rng.integers(6)))
        np.testing.assert_array_equal(obs[:3], previous[1:])  # older frames move one slot towards 0
        changed_newest += not np.array_equal(obs[3], previous[3])
        previous = obs
    env.close()
    assert changed_newest > 60  # the ball and paddles move: slot 3 is the fresh frame


def test_no_op_starts_vary_the_first_observation_across_seeds():
    # Freeway's cars move from frame 0, so a different number of no-ops shows on screen
    # (in Pong and Breakout nothing moves before the serve).
    def first_obs(noop_max, num_envs):
        vec = make_atari_vector_env("ALE/Freeway-v5", num_envs, seed=0, settings=AtariSettings(noop_max=noop_max))
        obs, info = vec.reset(seed=0)
        return obs, info["episode_frame_number"]
    obs, frames = first_obs(30, 3)  # seeds 0-2 draw 16, 12 and 13 no-op frames
    assert len({o.tobytes() for o in obs}) == 3 and len(set(frames.tolist())) == 3
    obs, frames = first_obs(0, 2)
    assert len({o.tobytes() for o in obs}) == 1 and set(frames.tolist()) == {0}


def _space_invaders_rewards(settings, steps=300):
    vec = make_atari_vector_env("ALE/SpaceInvaders-v5", 2, seed=3, settings=settings)
    vec.reset(seed=3)
    rng = np.random.default_rng(0)
    rewards = [vec.step(random_actions(rng, 6, 2))[1] for _ in range(steps)]
    return np.stack(rewards)


def test_evaluation_keeps_raw_scores_and_clipping_is_only_a_training_option():
    raw = _space_invaders_rewards(RAW_SCORE)
    clipped = _space_invaders_rewards(AtariSettings(clip_rewards=True))
    assert raw.max() > 1  # aliens are worth 5 to 30 points
    # clipping changes rewards only, not the game: same seeds, same actions, same trajectory
    np.testing.assert_array_equal(clipped, np.sign(raw))
    # the evaluation path (make_env) sees the raw score too
    env = make_env("ALE/SpaceInvaders-v5")
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    single = [env.step(int(a))[1] for a in random_actions(rng, 6, 2 * 300)[::2]]
    env.close()
    np.testing.assert_array_equal(single, raw[:, 0])
    assert not RAW_SCORE.clip_rewards and not RAW_SCORE.terminal_on_life_loss
    assert TEACHER_TRAINING.clip_rewards and TEACHER_TRAINING.terminal_on_life_loss


def test_atari_evaluation_is_epsilon_greedy_so_a_policy_that_never_serves_still_plays():
    never_fire = lambda obs: np.zeros(len(obs), dtype=np.int64)  # Breakout: NOOP, the ball is never served
    assert eval_epsilon("ALE/Breakout-v5") == 0.05 and eval_epsilon("CartPole-v1") == 0.0
    first = run_episodes("ALE/Breakout-v5", never_fire, 1, seed=5, max_episode_steps=400, record_obs_limit=400)
    again = run_episodes("ALE/Breakout-v5", never_fire, 1, seed=5, max_episode_steps=400, record_obs_limit=400)
    # the draws depend on the episode's seed only: the same game again
    np.testing.assert_array_equal(first.visited_obs, again.visited_obs)
    # random actions served the ball five times and it was lost five times: the game ended
    assert first.lengths[0] < 400
    assert run_episodes("ALE/Breakout-v5", never_fire, 1, seed=5, max_episode_steps=50).lengths.tolist() == [50]
    # a greedy NOOP would leave every frame as it was after the no-op start; the random 5% of
    # actions move the paddle (and serve), so the frames change
    frames = first.visited_obs[:, -1]
    assert len({frame.tobytes() for frame in frames}) > 1


def test_terminal_on_life_loss_ends_the_episode_at_the_first_lost_life():
    settings = AtariSettings(terminal_on_life_loss=True, fire_reset=True)
    env = SingleAtariEnv("ALE/Breakout-v5", settings)
    _, info = env.reset(seed=0)
    lives = int(info["lives"])
    rng = np.random.default_rng(0)
    for step in range(2000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if terminated:
            break
    env.close()
    assert terminated and int(info["lives"]) == lives - 1 > 0


def test_vector_env_and_single_env_give_the_same_observations_for_the_same_seed():
    """Sub-env i of an actor's vector reset with seed s replays what the evaluation env reset with
    s + i sees: same no-op start, same sticky-action draws, same frames."""
    vec = make_vector_env(PONG, 3, seed=10)
    vec_obs, _ = vec.reset(seed=10)
    env = make_env(PONG)
    single_obs, _ = env.reset(seed=12)
    np.testing.assert_array_equal(vec_obs[2], single_obs)
    rng = np.random.default_rng(1)
    for _ in range(200):
        actions = random_actions(rng, 6, 3)
        vec_obs, vec_rewards, *_ = vec.step(actions)
        single_obs, reward, *_ = env.step(int(actions[2]))
        np.testing.assert_array_equal(vec_obs[2], single_obs)
        assert vec_rewards[2] == reward
    env.close()


def test_vector_env_resets_in_the_same_step_so_returns_and_boundaries_count_right():
    """The collector's contract: the step that ends an episode carries its reward and done flag and
    already returns the next episode's first observation (the last one is in info)."""
    settings = AtariSettings(noop_max=0, repeat_action_probability=0.0, max_frames_per_episode=100)
    vec = make_atari_vector_env(PONG, 2, seed=0, settings=settings)
    first, _ = vec.reset(seed=0)
    env = SingleAtariEnv(PONG, settings)
    env.reset(seed=0)
    for step in range(25):  # 25 agent steps x 4 frames = 100 frames: truncated on the last one
        obs, _, terminated, truncated, info = vec.step(np.zeros(2, np.int64))
        last_single, _, _, single_truncated, _ = env.step(0)
    env.close()
    assert truncated.all() and not terminated.any() and single_truncated
    np.testing.assert_array_equal(obs, first)  # noop_max 0, no sticky actions: the start again
    np.testing.assert_array_equal(info["final_obs"][0], last_single)


def test_atari_ids_are_checked_with_one_line_errors():
    check_env_id(PONG)
    with pytest.raises(ConfigError, match=r"^env\.id: 'ALE/Pong-v4' is not an ALE v5 id; use"):
        check_env_id("ALE/Pong-v4")
    with pytest.raises(ConfigError, match=r"legacy Atari id .*; use ALE/SpaceInvaders-v5$"):
        check_env_id("SpaceInvadersNoFrameskip-v4")
    with pytest.raises(ConfigError, match=r"repeat_action_probability 1\.0 must be in \[0, 1\)"):
        make_atari_vector_env(PONG, 1, seed=0, settings=AtariSettings(repeat_action_probability=1.0))


# ---------------------------------------------------------------- networks

# Exact counts for 4x84x84 inputs and Pong's 6 actions; fractions are of the Nature DQN.
EXPECTED_PARAMS = {"nature": 1_687_206, "rusu-25": 424_790, "rusu-7": 111_798, "rusu-4": 61_174,
                   "tiny-1.7": 29_534}


@pytest.mark.parametrize("preset", sorted(CNN_PRESETS))
def test_cnn_preset_parameter_counts(preset):
    net = build_network({"kind": "cnn", "preset": preset}, OBS_SHAPE, 6)
    assert count_parameters(net) == EXPECTED_PARAMS[preset]
    # the same sizes spelled out in full give the same network
    assert count_parameters(build_network(cnn_spec(preset), OBS_SHAPE, 6)) == EXPECTED_PARAMS[preset]


def test_rusu_students_have_the_papers_fractions_of_the_dqn():
    fractions = {name: EXPECTED_PARAMS[name] / EXPECTED_PARAMS["nature"] for name in ("rusu-25", "rusu-7", "rusu-4")}
    assert round(fractions["rusu-25"], 2) == 0.25
    assert round(fractions["rusu-7"], 2) == 0.07
    assert round(fractions["rusu-4"], 2) == 0.04
    assert round(EXPECTED_PARAMS["tiny-1.7"] / EXPECTED_PARAMS["nature"], 3) == 0.018  # Sun & Fazli's 1.7%


def test_cnn_takes_uint8_frames_and_scales_them_inside():
    torch.manual_seed(0)
    net = build_network({"kind": "cnn", "preset": "rusu-4"}, OBS_SHAPE, 6)
    frames = torch.randint(0, 256, (3, *OBS_SHAPE), dtype=torch.uint8)
    out = net(frames)
    assert out.shape == (3, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, net(frames.float()))  # pixel units either way


def test_cnn_spec_errors_name_the_field():
    with pytest.raises(CheckpointError, match=r"^network\.preset 'huge' is unknown; use one of"):
        build_network({"kind": "cnn", "preset": "huge"}, OBS_SHAPE, 6)
    with pytest.raises(CheckpointError, match=r"^network\.fc is missing"):
        build_network({"kind": "cnn", "channels": [8], "kernels": [8], "strides": [4]}, OBS_SHAPE, 6)
    with pytest.raises(CheckpointError, match=r"^network\.kernels\[1\] 9 does not fit"):
        build_network({"kind": "cnn", "channels": [8, 8], "kernels": [80, 9], "strides": [1, 1], "fc": []},
                      OBS_SHAPE, 6)


def test_student_network_for_picks_a_cnn_for_atari_and_an_mlp_otherwise():
    assert student_network_for(PONG, (64, 64), "relu")["kind"] == "cnn"
    assert count_parameters(build_network(student_network_for(PONG, (), "relu"), OBS_SHAPE, 6)) == 111_798
    assert student_network_for("CartPole-v1", (64, 64), "relu") == {"kind": "mlp", "hidden": [64, 64],
                                                                   "activation": "relu"}


# ---------------------------------------------------------------- store and collector

TINY_TEACHER_NET = {"kind": "cnn", "channels": [8], "kernels": [8], "strides": [8], "fc": [32]}


def _pong_states(count):
    vec = make_vector_env(PONG, 4, seed=0)
    obs, _ = vec.reset(seed=0)
    rng = np.random.default_rng(0)
    states = []
    for _ in range(count // 4):
        states.append(obs)
        obs = vec.step(random_actions(rng, 6, 4))[0]
    return np.concatenate(states)


def test_store_round_trips_uint8_frame_stacks(redis_url, run_id):
    obs = _pong_states(256)
    chunk = LabelledChunk(LabelledStates(obs, np.random.default_rng(0).normal(size=(256, 6)).astype(np.float32),
                                         np.arange(256, dtype=np.int32) % 6), ChunkMeta(actor_id=0))
    blob_bytes = len(encode_chunk(chunk.states.arrays(), chunk.meta.to_json()))
    bytes_per_state = blob_bytes / 256
    raw_per_state = obs[0].nbytes + 6 * 4 + 4
    print(f"\nAtari chunk of 256 Pong states: {bytes_per_state:.0f} B/state stored vs {raw_per_state} raw "
          f"({raw_per_state / bytes_per_state:.0f}x smaller)")
    assert bytes_per_state <= raw_per_state / 20  # the bound; Pong frames compress far better
    store = ReplayTable(StoreAddress(redis_url, run_id, capacity_states=1024, chunk_states=256))
    try:
        store.insert([chunk])
        batch = store.sample(64, np.random.default_rng(1))
        assert batch.obs.dtype == np.uint8 and batch.obs.shape == (64, 4, 84, 84)
        for state, action in zip(batch.obs, batch.action):  # each sampled state is a stored one
            matches = np.flatnonzero((obs == state).all(axis=(1, 2, 3)))
            assert matches.size and action in chunk.states.action[matches]
        assert store.stats()["bytes_stored"] == blob_bytes
    finally:
        store.clear()


def test_collector_on_pong_labels_uint8_states_with_a_cnn_teacher(redis_url, run_id):
    torch.manual_seed(0)
    module = build_network(TINY_TEACHER_NET, OBS_SHAPE, 6)
    spec = PolicySpec("teacher", PONG, OBS_SHAPE, "uint8", 6, "q", TINY_TEACHER_NET, count_parameters(module))
    teacher = PolicyBundle.from_module(spec, module)
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=2048, chunk_states=64)
    settings = CollectorSettings(actor_id=0, env_id=PONG, num_envs=4, epsilon=0.1, chunk_states=64,
                                 chunks_per_write=1, torch_threads=1, seed=1)
    collector = Collector(settings, address, teacher)
    try:
        report = collector.collect(1.0)
    finally:
        collector.close()
    store = ReplayTable(address)
    try:
        assert report.states_written == store.stats()["states_written"] >= 64
        batch = store.sample(32, np.random.default_rng(0))
        assert batch.obs.dtype == np.uint8 and batch.obs.shape == (32, 4, 84, 84)
        expected = FrozenPolicy.from_bundle(teacher).outputs(batch.obs)
        np.testing.assert_allclose(batch.teacher_out, expected, rtol=1e-5, atol=1e-5)
    finally:
        store.clear()


def test_evaluation_episode_returns_are_whole_game_scores():
    """A random Pong player loses most points: its return is a score like -20, not a clipped sum,
    and the episode ends with the game (21 points), not at a lost point or life."""
    stats = run_episodes(PONG, random_act_fn(6, seed=0), episodes=1, seed=0)
    assert stats.returns[0] <= -15 and float(stats.returns[0]).is_integer()
    assert stats.lengths[0] > 500


def test_an_atari_run_config_gets_a_rusu_cnn_student(tmp_path):
    from kd_system.config import load_config
    from kd_system.errors import ConfigError
    from kd_system.policies.networks import build_network, cnn_spec, count_parameters
    from kd_system.policies.files import PolicySpec, save_policy
    from kd_system.launch.preparation import prepare

    network = cnn_spec("nature")
    module = build_network(network, (4, 84, 84), 6)
    spec = PolicySpec("teacher", "ALE/Pong-v5", (4, 84, 84), "uint8", 6, "q", network, count_parameters(module))
    save_policy(tmp_path / "pong-teacher", spec, module)
    config = load_config(None, ["env.id=ALE/Pong-v5", f"teacher.checkpoint={tmp_path / 'pong-teacher'}"])
    prepared = prepare(config)
    assert prepared.tasks[0].student_spec.network["kind"] == "cnn"
    assert prepared.student_params == 111_798  # rusu-7: 6.6% of the Nature DQN's 1,687,206
    with pytest.raises(ConfigError, match="student.preset rusu-25 gives 424790 parameters"):
        prepare(load_config(None, ["env.id=ALE/Pong-v5", f"teacher.checkpoint={tmp_path / 'pong-teacher'}",
                                   "student.preset=rusu-25"]))


def test_labelling_loop_overlaps_two_env_groups_with_the_same_seeds_as_one_vector():
    """Atari actors split their envs in two groups (emulate one while labelling the other); the
    sub-envs keep the seeds an unsplit vector gives them, and every labelled state is a copy."""
    from kd_system.actors.behaviour import make_acting_policy
    from kd_system.actors.labelling import LabellingLoop

    torch.manual_seed(0)
    module = build_network(TINY_TEACHER_NET, OBS_SHAPE, 6)
    spec = PolicySpec("teacher", PONG, OBS_SHAPE, "uint8", 6, "q", TINY_TEACHER_NET, count_parameters(module))
    teacher = FrozenPolicy.from_bundle(PolicyBundle.from_module(spec, module))
    loop = LabellingLoop(PONG, 5, 7, teacher, make_acting_policy("teacher", 0.0, 6, 0))
    whole = make_atari_vector_env(PONG, 5, seed=7)
    try:
        assert [len(g.obs) for g in loop.groups] == [3, 2]
        np.testing.assert_array_equal(np.concatenate([g.obs for g in loop.groups]), whole.reset(seed=7)[0])
        labelled = [loop.step() for _ in range(6)]
        assert [len(states) for states, _, _ in labelled] == [3, 2] * 3
        assert loop.env_steps == 3 + 2 + 3 + 2 + 3  # the last group sent is still in flight
        first_obs = labelled[0][0].copy()
        for _ in range(10):
            loop.step()
        np.testing.assert_array_equal(labelled[0][0], first_obs)  # not overwritten by later steps
        for states, outputs, actions in labelled:
            assert states.dtype == np.uint8 and actions.dtype == np.int32
            np.testing.assert_array_equal(actions, outputs.argmax(axis=1))  # epsilon 0: greedy teacher
    finally:
        loop.close()
        whole.close()


def test_one_env_group_labels_the_whole_vector_in_turns():
    """actors.env_groups 1: the actor emulates and labels in turns, each step the whole vector, and
    the env steps are counted as soon as a step returns. The states match an unsplit vector's."""
    from kd_system.actors.behaviour import make_acting_policy
    from kd_system.actors.labelling import LabellingLoop

    torch.manual_seed(0)
    module = build_network(TINY_TEACHER_NET, OBS_SHAPE, 6)
    spec = PolicySpec("teacher", PONG, OBS_SHAPE, "uint8", 6, "q", TINY_TEACHER_NET, count_parameters(module))
    teacher = FrozenPolicy.from_bundle(PolicyBundle.from_module(spec, module))
    loop = LabellingLoop(PONG, 5, 7, teacher, make_acting_policy("teacher", 0.0, 6, 0), cpus=1, groups=1)
    whole = make_atari_vector_env(PONG, 5, seed=7)
    try:
        assert [len(g.obs) for g in loop.groups] == [5]
        expected = whole.reset(seed=7)[0]
        for step in range(3):
            states, outputs, actions = loop.step()
            np.testing.assert_array_equal(states, expected)
            assert loop.env_steps == 5 * (step + 1)
            expected = whole.step(actions)[0]
    finally:
        loop.close()
        whole.close()

