"""Atari games preprocessed as in the ACKTR paper (`agents.atari`) and
their episodes in `GymnasiumEnvironment`: whole games tallied from the
unclipped score, lives ending the learner's episodes, exact resume."""

import os
import re

import numpy as np
import pytest
from tf_agents.trajectories import time_step as ts

from agents import atari
from agents.config import Config, resolve
from agents.env_factory import make_env
from agents.envs import GymnasiumEnvironment
from agents.presets import preset_for

BREAKOUT = "ALE/Breakout-v5"  # 5 lives, FIRE serves the ball
# 3 lives, aliens worth 5-30 points: clipped rewards and scores differ.
SPACE_INVADERS = "ALE/SpaceInvaders-v5"


def _play_one_game(env, rng, seed):
    """Random actions through the preprocessed `env` until the game is
    over; the reset after a lost life continues it. Returns every step's
    `(observation, reward, terminated, truncated, info)`."""
    env.reset(seed=seed)
    steps = []
    while True:
        step = env.step(rng.integers(env.action_space.n))
        steps.append(step)
        _, _, terminated, truncated, info = step
        if truncated or (terminated and not info["life_lost"]):
            return steps
        if terminated:
            env.reset()


def test_frames_are_84x84_grayscale_uint8_stacked_last_on_the_channels():
    env = make_env(BREAKOUT)
    assert env.observation_space.shape == (84, 84, 4)
    assert env.observation_space.dtype == np.uint8
    previous, _ = env.reset(seed=0)
    assert previous.shape == (84, 84, 4) and previous.dtype == np.uint8
    for _ in range(20):
        observation, *_ = env.step(3)
        # The stack shifts by one frame per step: oldest out, newest in.
        np.testing.assert_array_equal(observation[..., :3], previous[..., 1:])
        previous = observation
    assert previous.max() > 0  # the screen is drawn, not blank
    env.close()


def test_rewards_are_clipped_to_their_sign_and_the_score_is_kept():
    env = make_env(SPACE_INVADERS)
    steps = _play_one_game(env, np.random.default_rng(0), seed=1)
    scores = np.array([info["score"] for *_, info in steps])
    rewards = np.array([reward for _, reward, *_ in steps])
    np.testing.assert_array_equal(rewards, np.sign(scores))
    assert scores.max() > 1  # points the clipping changes
    env.close()


def test_a_lost_life_ends_the_episode_but_not_the_game():
    env = make_env(BREAKOUT)
    ale = env.unwrapped.ale
    env.reset(seed=2)
    lives = ale.lives()
    rng = np.random.default_rng(1)
    lost = 0
    while True:
        _, _, terminated, truncated, info = env.step(rng.integers(4))
        frame = info["episode_frame_number"]
        if truncated or (terminated and not info["life_lost"]):
            break
        if terminated:
            lost += 1
            assert ale.lives() == lives - lost
            env.reset()
            # The game went on: same lives, its frame count still running.
            assert ale.lives() == lives - lost
            assert ale.getEpisodeFrameNumber() > frame
    assert lost == lives - 1 and ale.lives() == 0
    env.close()


def test_the_environment_reports_whole_games_from_their_scores():
    # Oracle: the same copy stepped by hand with the same actions.
    seed, n = 5, 900
    rng = np.random.default_rng(3)
    actions = rng.integers(6, size=n)
    env = GymnasiumEnvironment(SPACE_INVADERS, num_envs=1, seed=seed)
    time_steps = [env.reset()] + [
        env.step(actions[i : i + 1]) for i in range(n)
    ]
    reported = env.pop_completed_episodes()

    by_hand = make_env(SPACE_INVADERS)
    by_hand.reset(seed=seed)
    games, score, length, reset_next = [], 0.0, 0, False
    rewards, step_types = [], []
    for action in actions:
        if reset_next:
            by_hand.reset()
            reset_next = False
            rewards.append(0.0)
            step_types.append(ts.StepType.FIRST)
            continue
        _, reward, terminated, truncated, info = by_hand.step(action)
        score += info["score"]
        length += 1
        rewards.append(reward)
        step_types.append(
            ts.StepType.LAST if terminated or truncated else ts.StepType.MID
        )
        reset_next = terminated or truncated
        if truncated or (terminated and not info["life_lost"]):
            games.append((score, length))
            score, length = 0.0, 0
    assert len(games) >= 1 and any(score > 1 for score, _ in games)
    assert reported == games
    np.testing.assert_array_equal(
        [t.reward[0] for t in time_steps[1:]], rewards
    )
    np.testing.assert_array_equal(
        [t.step_type[0] for t in time_steps[1:]], step_types
    )
    env.close()
    by_hand.close()


def test_resume_after_a_lost_life_continues_the_game_exactly():
    rng = np.random.default_rng(4)
    env = GymnasiumEnvironment(BREAKOUT, num_envs=2, seed=7)
    env.reset()
    lost = False
    for _ in range(400):  # until a copy has lost a life mid-game
        step = env.step(rng.integers(4, size=2))
        lost = lost or bool(np.any(step.step_type == ts.StepType.LAST))
        if lost and np.all(step.step_type == ts.StepType.MID):
            break
    assert lost
    state = env.get_state()
    restored = GymnasiumEnvironment(BREAKOUT, num_envs=2, seed=123)
    restored.set_state(state)
    for _ in range(300):
        action = rng.integers(4, size=2)
        a, b = env.step(action), restored.step(action)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert env.pop_completed_episodes() == restored.pop_completed_episodes()
    env.close()
    restored.close()


def test_atari_ids_get_the_atari_preset():
    assert atari.is_atari("ALE/Pong-v5") and atari.is_atari(BREAKOUT)
    assert not atari.is_atari("CartPole-v1")
    assert preset_for("ALE/Pong-v5") == "atari"
    config = resolve(Config(algo="acktr", env="ALE/Pong-v5"))
    assert config.preset == "atari"
    assert (config.num_envs, config.n_steps) == (32, 20)
    assert config.shared_torso and config.critic == "joint"
    assert config.lr_schedule == "linear"
    # PPO's is rl-baselines3-zoo's `atari` entry over SB3's defaults.
    ppo = resolve(Config(algo="ppo", env="ALE/Pong-v5"))
    assert (ppo.num_envs, ppo.n_steps, ppo.n_epochs) == (8, 128, 4)
    assert (ppo.minibatch_size, ppo.learning_rate) == (256, 2.5e-4)
    assert (ppo.clip_range, ppo.vf_coef, ppo.ent_coef) == (0.1, 0.5, 0.01)
    assert ppo.gae_lambda == 0.95 and ppo.normalize_advantages
    assert ppo.max_grad_norm == 0.5 and ppo.gamma == 0.99


def _observations(env, actions, seed):
    observation, _ = env.reset(seed=seed)
    seen = [observation]
    for action in actions:
        observation, _, terminated, truncated, _ = env.step(action)
        seen.append(observation)
        if terminated or truncated:
            break
    env.close()
    return np.stack(seen)


def test_the_papers_noframeskip_v4_games_are_v5_without_sticky_actions():
    """The paper's `NoFrameskip-v4` dynamics: the same game, preprocessing
    and preset as `v5`, without its sticky actions (repeat probability
    0.25). Same seed and actions: the v4 id plays exactly as v5 with them
    off, and v5 as it is plays otherwise."""
    assert atari.is_atari("PongNoFrameskip-v4")
    assert preset_for("PongNoFrameskip-v4") == "atari"
    actions = np.random.default_rng(0).integers(6, size=300)
    paper = _observations(make_env("PongNoFrameskip-v4"), actions, seed=3)
    assert paper.shape[1:] == (84, 84, 4)
    unsticky = make_env("ALE/Pong-v5", {"repeat_action_probability": 0.0})
    np.testing.assert_array_equal(paper, _observations(unsticky, actions, 3))
    sticky = _observations(make_env("ALE/Pong-v5"), actions, seed=3)
    assert not np.array_equal(paper, sticky)


def test_bad_atari_settings_raise_with_what_was_received():
    with pytest.raises(ValueError, match="frameskip.*'frameskip': 4"):
        make_env("ALE/Pong-v5", {"frameskip": 4})
    with pytest.raises(ValueError, match="'ALE/Pong-v5' is an Atari game"):
        make_env("ALE/Pong-v5", time_feature=True)


@pytest.mark.slow
def test_train_and_evaluate_a_policy_on_a_game(tmp_path, capsys):
    from agents import evaluate, train

    logdir = str(tmp_path / "run")
    argv = ["--algo", "a2c", "--env", "ALE/Pong-v5", "--num-envs", "2"]
    argv += ["--n-steps", "5", "--total-steps", "20", "--logdir", logdir]
    assert train.main(argv + ["--no-progress"]) == 0
    assert "a2c on ALE/Pong-v5, preset atari:" in capsys.readouterr().out
    gif = str(tmp_path / "pong.gif")
    argv = [logdir, "--env", "ALE/Pong-v5", "--episodes", "1", "--video", gif]
    # evaluate fails unless the GIF's replay scores what the episode did.
    assert evaluate.main(argv) == 0
    line = capsys.readouterr().out
    score = float(re.search(r"mean return (-?[\d.]+)", line).group(1))
    assert -21 <= score <= 21 and score == int(score)  # one game of Pong
    assert os.path.getsize(gif) > 0
