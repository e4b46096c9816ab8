"""Run train.py with a SIGKILL injected at a chosen point; used by test_faults.py.

    python tests/fault_runner.py POINT COUNT -- TRAIN_FLAGS...

POINT is where the process kills itself, on the COUNT-th time it gets there:
- `step`: inside a training step, after the D step's weights changed;
- `checkpoint`: after a checkpoint's data files are written but before the checkpoint
  state file names it;
- `image`: after an image grid's temporary file is written but before its rename.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kill_on(count):
    calls = {"n": 0}

    def maybe_kill():
        calls["n"] += 1
        if calls["n"] == count:
            os.kill(os.getpid(), signal.SIGKILL)

    return maybe_kill


def install(point, count):
    maybe_kill = kill_on(count)
    if point == "step":
        from msg_tf import training

        original = training.Trainer.train_step

        def train_step(self, reals, step):
            result = original(self, reals, step)
            maybe_kill()
            return result

        training.Trainer.train_step = train_step
    elif point == "checkpoint":
        from tensorflow.python.checkpoint import checkpoint_management

        original = checkpoint_management.update_checkpoint_state_internal

        def update_state(*args, **kwargs):
            maybe_kill()
            return original(*args, **kwargs)

        checkpoint_management.update_checkpoint_state_internal = update_state
    elif point == "image":
        from msg_tf import reporting

        original_replace = reporting.os.replace

        class PatchedOs:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(source, target):
                if str(target).endswith(".png"):
                    maybe_kill()
                return original_replace(source, target)

        reporting.os = PatchedOs()
    else:
        raise SystemExit(f"unknown fault point {point!r}: expected step, checkpoint or image")


if __name__ == "__main__":
    point, count = sys.argv[1], int(sys.argv[2])
    train_args = sys.argv[sys.argv.index("--") + 1:]
    install(point, count)
    import train
    from absl import app

    sys.argv = ["train.py", *train_args]
    app.run(train.main)
