"""Episodes played outside training: the step of an evaluation, and the
video of one.

`agents.evaluate` steps its environment (`agents.env_factory.make_env`)
with `play_step`. For a video it runs this module in a child process,

    python -m agents.replay ENV SEED ACTIONS.npy OUT.gif

which resets `ENV` with `SEED`, replays the saved actions with
`rgb_array` rendering (a MuJoCo camera tracking the first body), writes
every k-th frame to the GIF so that it plays at most 25 frames per
second (GIF delays are whole centiseconds), and prints the replay's
return. The child imports no TensorFlow: MuJoCo's EGL renderer crashes in
a process that has loaded TensorFlow. It builds `ENV` without the
observation features a policy may have been trained with: they change
what the policy reads, not the dynamics, the frames or the return.

An Atari game is built preprocessed as in training (`agents.atari`),
played to the end of the game across its lives, and scored by the game's
own, unclipped, points (`agents.spaces.game_score`).
"""

import sys

import gymnasium
import numpy as np

from agents import atari
from agents.env_factory import make_env
from agents.spaces import game_score


def play_step(env: gymnasium.Env, action):
    """`env.step(action)` as `(observation, score, terminated,
    truncated)`, over whole Atari games: the score is the game's
    unclipped points (`game_score`), and a step that loses a life resets
    into the same game and is not terminal."""
    observation, reward, terminated, truncated, info = env.step(action)
    score, life_lost = game_score(reward, info)
    if terminated and life_lost:
        observation, _ = env.reset()
        terminated = False
    return observation, float(score), terminated, truncated


def _follow_first_body(env: gymnasium.Env) -> None:
    """Points a MuJoCo environment's camera at its first body, which walks
    out of the default view otherwise; other environments are left as
    they are."""
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is None:
        return
    import mujoco

    renderer.default_cam_config = {
        "distance": 4.0,
        "elevation": -20.0,
        "azimuth": 90.0,  # from the side
        **(renderer.default_cam_config or {}),
        "type": mujoco.mjtCamera.mjCAMERA_TRACKING,
        "trackbodyid": 1,
    }
    renderer.camera_id = None  # -1 would reset the camera to free each frame


def record_gif(env_id: str, seed: int, actions: np.ndarray, path: str) -> float:
    """Replays `actions` from a reset with `seed` into the GIF `path`;
    returns the replay's return."""
    from PIL import Image

    env = make_env(env_id, render_mode="rgb_array")
    _follow_first_body(env)
    env.reset(seed=seed)
    frames, total = [env.render()], 0.0
    for action in actions:
        action = action.item() if action.ndim == 0 else action
        total += play_step(env, action)[1]
        frames.append(env.render())
    fps = env.metadata.get("render_fps", 30)
    if atari.is_atari(env_id):  # one step shows every FRAME_SKIP-th frame
        fps /= atari.FRAME_SKIP
    env.close()
    every = max(1, round(fps / 25))
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames[::every]]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=1000.0 * every / fps,
        loop=0,
    )
    return total


if __name__ == "__main__":
    env_id, seed, actions, path = sys.argv[1:5]
    print(repr(record_gif(env_id, int(seed), np.load(actions), path)))
