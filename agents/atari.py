"""Atari games (the Arcade Learning Environment, `ale-py`) preprocessed as
the ACKTR paper and OpenAI baselines did (the protocol of Mnih et al. 2015).

`preprocess(env)` turns a raw ALE game into what the paper's network
reads:

1. up to 30 no-op actions after a reset, so that episodes start apart;
2. each action repeated for 4 frames, the observation the pixel-wise
   maximum of the last two of them (some games draw sprites on alternate
   frames);
3. the frame in 84 x 84 grayscale (steps 1-3: Gymnasium's
   `AtariPreprocessing`);
4. `EpisodicLife`: a lost life ends the learner's episode (`terminated`,
   so nothing is bootstrapped across the death) but not the game; the
   next reset continues the game;
5. `FireOnReset`: FIRE pressed after each reset in games that wait for it
   (Breakout);
6. `ClipReward`: the learner's reward is the sign of the game's, and the
   game's own reward is kept in `info["score"]`, from which training and
   evaluation report returns (`agents.spaces.game_score`: game scores
   over whole games, not clipped rewards per life);
7. the last 4 frames stacked on the channel axis: observations
   `(84, 84, 4)` of `uint8`, scaled to `[0, 1]` only inside the network.

The ALE `v5` ids (`ALE/Pong-v5`) repeat the previous action with
probability 0.25 ("sticky actions", Machado et al. 2018); the paper used
the `NoFrameskip-v4` games, which do not. `env_kwargs=
{"repeat_action_probability": 0.0}` (or a `NoFrameskip-v4` id) gives the
paper's setting. The game's own frame skip is set to 1 here, since step 2
does the skipping.

This module imports Gymnasium and `ale_py` only, not TensorFlow, so that
environment subprocesses start light.
"""

import gymnasium
import numpy as np
from gymnasium import wrappers

FRAME_SKIP = 4
FRAME_STACK = 4
FRAME_SIZE = 84
ALE_ENTRY_POINT = "ale_py.env:AtariEnv"


def register(env_id: str) -> None:
    """Registers the ALE ids with Gymnasium when `env_id` is not
    registered yet (importing `ale_py` takes 0.2 s, so only then);
    `ale-py` ships the game ROMs, so nothing is downloaded."""
    if env_id in gymnasium.registry:
        return
    import ale_py

    # The emulator's banner and notices; its errors still print.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gymnasium.register_envs(ale_py)


def is_atari(env_id: str) -> bool:
    """Whether `env_id` is an ALE game (registering the ALE ids first)."""
    register(env_id)
    spec = gymnasium.registry.get(env_id)
    return spec is not None and spec.entry_point == ALE_ENTRY_POINT


def make(env_id: str, env_kwargs: dict | None = None) -> gymnasium.Env:
    """The ALE game `env_id`, preprocessed (`preprocess`)."""
    kwargs = dict(env_kwargs or {})
    if kwargs.get("frameskip", 1) != 1:
        raise ValueError(
            "Atari frames are skipped by the preprocessing (4 per action); "
            "the game's own frameskip must be 1. Received: "
            f"env_kwargs={env_kwargs!r}"
        )
    kwargs["frameskip"] = 1
    return preprocess(gymnasium.make(env_id, **kwargs))


def preprocess(env: gymnasium.Env) -> gymnasium.Env:
    """Steps 1-7 of the module docstring around a raw ALE game (frameskip
    1); observations `(84, 84, 4)` `uint8`."""
    env = wrappers.AtariPreprocessing(
        env, noop_max=30, frame_skip=FRAME_SKIP, screen_size=FRAME_SIZE
    )
    env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireOnReset(env)
    env = ClipReward(env)
    env = wrappers.FrameStackObservation(env, FRAME_STACK)
    channels_last = gymnasium.spaces.Box(
        0, 255, (FRAME_SIZE, FRAME_SIZE, FRAME_STACK), np.uint8
    )
    return wrappers.TransformObservation(
        env, lambda frames: np.moveaxis(frames, 0, -1), channels_last
    )


class EpisodicLife(gymnasium.Wrapper):
    """A lost life ends the episode (`terminated`, `info["life_lost"]`)
    while the game goes on: the reset that follows (`continues_game` until
    then) takes one no-op step instead of restarting the game."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self._lives = 0
        self.continues_game = False

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        lives = self._ale_lives()
        life_lost = 0 < lives < self._lives and not (terminated or truncated)
        self._lives = lives
        self.continues_game = life_lost
        info["life_lost"] = life_lost
        return observation, reward, terminated or life_lost, truncated, info

    def reset(self, *, seed=None, options=None):
        observation = None
        if self.continues_game and seed is None:
            observation, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op ended the game
                observation = None
        if observation is None:
            observation, info = self.env.reset(seed=seed, options=options)
        self.continues_game = False
        self._lives = self._ale_lives()
        return observation, info


class FireOnReset(gymnasium.Wrapper):
    """Presses FIRE after every reset, for games that do not start (or
    serve a new ball) without it."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if "FIRE" not in meanings:
            raise ValueError(
                f"FireOnReset needs a game with a FIRE action; this one has "
                f"{meanings}"
            )
        self._fire = meanings.index("FIRE")

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        observation, _, terminated, truncated, info = self.env.step(self._fire)
        if terminated or truncated:
            observation, info = self.env.reset(options=options)
        return observation, info


class ClipReward(gymnasium.Wrapper):
    """The reward becomes its sign (-1, 0 or 1); `info["score"]` keeps the
    game's reward."""

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        info["score"] = float(reward)
        return observation, float(np.sign(reward)), terminated, truncated, info
