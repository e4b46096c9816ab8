"""Profile one training iteration: time per part, time per op type, and FLOPs.

    python bench/profile_step.py --dataset=datasets/emoji64 --resolution=32 \
        --loss=ra_hinge --batch_size=16 --channel_base=8192 --channel_max=128 \
        --latent_size=128

Takes train.py's flags and builds the models as training does. Prints JSON lines:

- `"kind": "part"`: median milliseconds of each part of an iteration, run on its own,
  and of the full iteration. The parts are G forward, D forward on a real batch, the
  D step and the G step with and without their optimizer updates, and the EMA update;
- `"kind": "op"`: the op types that take the most time in a `tf.profiler` trace of
  `--trace_steps` full iterations, as milliseconds per iteration and share of all op
  time (ops on parallel threads overlap, so op time can exceed wall time);
- `"kind": "flops"`: multiply-add FLOPs (2 per multiply-add) of the convolutions and
  matrix products in the traced graphs, per image for G's and D's forward passes and
  per iteration, the achieved GFLOP/s and its share of a large float32 matmul measured
  in the same process.

The trace stays in `--trace_dir` for TensorBoard's profile plugin, if that is installed.
"""

import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from trainer_setup import trainer_from_flags  # noqa: E402

flags.DEFINE_integer("warmup_steps", 3, "Untimed calls of each part before measuring.")
flags.DEFINE_integer("steps", 5, "Calls per timed repeat of each part.")
flags.DEFINE_integer("repeats", 3, "Timed repeats per part; the median is reported.")
flags.DEFINE_integer("trace_steps", 3, "Full iterations recorded by the profiler.")
flags.DEFINE_string("trace_dir", "", "Profiler output folder (default: a temporary one).")
flags.DEFINE_integer("top_ops", 15, "Op types listed, by time.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matmul that sets "
                     "the machine's reference GFLOP/s.")
FLAGS = flags.FLAGS


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def median_ms(fn) -> float:
    for _ in range(FLAGS.warmup_steps):
        fn()
    seconds = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) / FLAGS.steps * 1000


# ---------------------------------------------------------------------------
# FLOPs from graph shapes


def _shape(tensor) -> list[int] | None:
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return None
    return dims


def _op_flops(op) -> int | None:
    """Return 2 x the multiply-adds of a conv or matmul op, 0 for other ops, None if unknown."""
    kind = op.type
    if kind == "Conv2D":
        out, kernel = _shape(op.outputs[0]), _shape(op.inputs[1])
        if out and kernel:
            return 2 * int(np.prod(out)) * kernel[0] * kernel[1] * kernel[2]
    elif kind in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
        # Both cost what the forward conv costs: one multiply-add per output gradient
        # element and kernel tap and input channel.
        out_grad = _shape(op.inputs[2])
        kernel = (_shape(op.inputs[1]) if kind == "Conv2DBackpropInput"
                  else _shape(op.outputs[0]))
        if out_grad and kernel:
            return 2 * int(np.prod(out_grad)) * kernel[0] * kernel[1] * kernel[2]
    elif kind in ("DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropInput",
                  "DepthwiseConv2dNativeBackpropFilter"):
        grad = op.outputs[0] if kind == "DepthwiseConv2dNative" else op.inputs[2]
        out = _shape(grad)
        kernel = (_shape(op.inputs[1]) if kind != "DepthwiseConv2dNativeBackpropFilter"
                  else _shape(op.outputs[0]))
        if out and kernel:
            return 2 * int(np.prod(out)) * kernel[0] * kernel[1]
    elif kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a, out = _shape(op.inputs[0]), _shape(op.outputs[0])
        if a and out:
            adjoint = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
            inner = a[-2] if adjoint else a[-1]
            return 2 * int(np.prod(out)) * inner
    else:
        return 0
    return None


def graph_flops(concrete_function) -> int:
    """Sum `_op_flops` over the ops of a traced graph that its outputs depend on.

    Gradient functions build some results that nothing uses, such as the filter
    gradients of D's convolutions in the G step. Grappler removes them before running,
    so they are left out here too.
    """
    graph = concrete_function.graph
    pending = [t.op for t in concrete_function.outputs] + list(graph.control_outputs)
    needed = set()
    while pending:
        op = pending.pop()
        if op.name in needed:
            continue
        needed.add(op.name)
        pending.extend(t.op for t in op.inputs)
        pending.extend(op.control_inputs)
    total, unknown = 0, []
    for op in graph.get_operations():
        if op.name not in needed:
            continue
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            raise ValueError(f"{op.name} calls a nested function; trace the Python "
                             "function it wraps instead")
        flops = _op_flops(op)
        if flops is None:
            unknown.append(op.name)
        else:
            total += flops
    if unknown:
        raise ValueError(f"ops with unknown shapes, FLOPs not counted: {unknown[:5]}")
    return total


# ---------------------------------------------------------------------------
# op types from a profiler trace


def op_time_by_type(trace_dir: str) -> dict[str, float]:
    """Return the total duration in seconds of each TensorFlow op type in a trace."""
    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no .xplane.pb file under {trace_dir}")
    space = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Executor events of TensorFlow ops are named "<op name>:<op type>".
                if ":" not in name or name.startswith(("Executor", "Thread")):
                    continue
                op_type = name.rsplit(":", 1)[1]
                # "Run" spans a whole nested function, whose ops are counted already.
                if op_type and not op_type.startswith(" ") and op_type != "Run":
                    totals[op_type] += event.duration_ps * 1e-12
    return totals


def matmul_gflops(size: int) -> float:
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    product = tf.function(lambda: tf.matmul(a, b))
    product()
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        product().numpy()
        seconds.append(time.perf_counter() - start)
    return 2 * size ** 3 / min(seconds) / 1e9


def main(argv):
    del argv
    strategy = tf.distribute.MirroredStrategy()
    if strategy.num_replicas_in_sync != 1:
        raise SystemExit("profile_step.py measures one replica; hide the other devices "
                         "(CUDA_VISIBLE_DEVICES) and rerun")
    trainer, ds = trainer_from_flags(strategy)
    config = trainer.config
    reals = [tf.convert_to_tensor(image) for image in next(iter(ds))]
    step = tf.constant(0, tf.int64)
    beta = tf.constant(0.999, tf.float32)
    z = tf.random.normal([config.batch_size, config.latent_size])

    def in_replica(fn):
        return tf.function(lambda *args: strategy.run(fn, args=args))

    g_forward = in_replica(lambda z: trainer.G(z, training=True))
    d_forward = in_replica(lambda images: trainer.D(images, training=True))
    d_gradients = in_replica(trainer._d_step_gradients)
    g_gradients = in_replica(trainer._g_step_gradients)

    def d_step(reals, z):
        grads, _ = trainer._d_step_gradients(reals, z)
        trainer.D_opt.apply_gradients(zip(grads, trainer.D.trainable_variables))

    def g_step(reals, z):
        grads, _, _ = trainer._g_step_gradients(reals, z)
        trainer.G_opt.apply_gradients(zip(grads, trainer.G.trainable_variables))

    d_step = in_replica(d_step)
    g_step = in_replica(g_step)

    @tf.function
    def ema_update():
        for ema_var, var in zip(trainer.G_ema.weights, trainer.G.weights):
            ema_var.assign(var + (ema_var - var) * beta)

    parts = {
        "G forward": lambda: g_forward(z),
        "D forward (reals)": lambda: d_forward(reals),
        "D step gradients": lambda: d_gradients(reals, z),
        "D step (gradients and optimizer update)": lambda: d_step(reals, z),
        "G step gradients": lambda: g_gradients(reals, z),
        "G step (gradients and optimizer update)": lambda: g_step(reals, z),
        "EMA update": ema_update,
        "full iteration": lambda: trainer._train_step(reals, step, beta),
    }
    common = {"arch": config.arch, "resolution": config.resolution, "loss": config.loss,
              "batch_size": config.batch_size, "precision": config.mixed_precision,
              "xla": config.xla}
    iteration_ms = None
    for name, fn in parts.items():
        ms = median_ms(fn)
        iteration_ms = ms if name == "full iteration" else iteration_ms
        emit({"kind": "part", "part": name, "ms": round(ms, 2), **common})

    trace_dir = FLAGS.trace_dir or tempfile.mkdtemp(prefix="msg_tf_trace_")
    tf.profiler.experimental.start(trace_dir)
    for _ in range(FLAGS.trace_steps):
        trainer._train_step(reals, step, beta)
    tf.profiler.experimental.stop()
    totals = op_time_by_type(trace_dir)
    all_ops = sum(totals.values())
    for op_type, seconds in totals.most_common(FLAGS.top_ops):
        emit({"kind": "op", "op_type": op_type,
              "ms_per_iteration": round(seconds / FLAGS.trace_steps * 1000, 2),
              "share": round(seconds / all_ops, 4)})

    batch = config.batch_size
    g_flops = graph_flops(g_forward.get_concrete_function(z)) / batch
    d_flops = graph_flops(d_forward.get_concrete_function(reals)) / batch
    if config.reuse_fakes and not config.xla:
        one_pass = in_replica(trainer._replica_step_reusing_fakes)
        iteration_flops = graph_flops(one_pass.get_concrete_function(reals, step))
    else:
        iteration_flops = (graph_flops(d_gradients.get_concrete_function(reals, z))
                           + graph_flops(g_gradients.get_concrete_function(reals, z)))
    achieved = iteration_flops / (iteration_ms / 1000) / 1e9
    peak = matmul_gflops(FLAGS.matmul_size)
    emit({"kind": "flops", "G_forward_mflop_per_image": round(g_flops / 1e6, 1),
          "D_forward_mflop_per_image": round(d_flops / 1e6, 1),
          "iteration_gflop": round(iteration_flops / 1e9, 3),
          "iteration_mflop_per_image": round(iteration_flops / batch / 1e6, 1),
          "iteration_ms": round(iteration_ms, 1),
          "images_per_sec": round(batch / (iteration_ms / 1000), 2),
          "achieved_gflops": round(achieved, 2),
          f"matmul{FLAGS.matmul_size}_gflops": round(peak, 1),
          "share_of_matmul": round(achieved / peak, 3), "trace_dir": trace_dir, **common})


if __name__ == "__main__":
    app.run(main)
