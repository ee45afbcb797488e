"""tf.distribute for the training stages: one device, all local GPUs (or logical CPUs), several machines, TPU.

    strategy = make_strategy(recipe.distribute)      # before any other TensorFlow work in the process
    with strategy.scope():                           # models, tfmot wrappers, optimizers, metrics
        ...

`train.batch_size` is the GLOBAL batch: Keras splits each batch across the replicas. In a multi-worker run
every worker runs the same command with its own `TF_CONFIG`; the chief (task `chief`, else `worker` 0) writes
the run folder and the stage cache, the other workers write into a temporary folder that is deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import tensorflow as tf

from tflite_pipeline.config.sections import DistributeConfig
from tflite_pipeline.errors import RecipeError

Log = Callable[[str], None]


def split_cpu(devices: int) -> None:
    """Present the host CPU as `devices` logical devices (so `mirrored` has replicas without a GPU).
    Must run before TensorFlow initializes its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:
        raise RecipeError(f"Received `distribute.cpu_devices={devices}`, but TensorFlow's devices were already set "
                          "up in this process; start a new process (the CLI does) or set it before any TensorFlow "
                          "work.") from None


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment variable ({} when unset)."""
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except ValueError as error:
        raise RecipeError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                          '"index": 0}}.') from None


def make_strategy(config: DistributeConfig, log: Log = print) -> tf.distribute.Strategy:
    """The strategy the recipe asks for. Raises `RecipeError` when the machine cannot provide it."""
    if config.cpu_devices:
        split_cpu(config.cpu_devices)
    if config.strategy == "default":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) < 2:
            log("warning: distribute.strategy='mirrored' found one device; training runs on it alone (set "
                "distribute.cpu_devices to split the CPU)")
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log(f"[distribute] mirrored over {strategy.num_replicas_in_sync} replicas: {', '.join(devices)}")
        return strategy
    if config.strategy == "multi-worker":
        cluster = tf_config().get("cluster", {})
        if not cluster.get("worker") and not cluster.get("chief"):
            raise RecipeError("Received `distribute.strategy='multi-worker'` but TF_CONFIG names no cluster; set "
                              "TF_CONFIG on every machine, e.g. '{\"cluster\": {\"worker\": [\"host1:12345\", "
                              "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = tf_config().get("task", {})
        log(f"[distribute] multi-worker: {strategy.num_replicas_in_sync} replicas over "
            f"{len(cluster.get('worker', [])) + len(cluster.get('chief', []))} workers; this is "
            f"{task.get('type')} {task.get('index')}{' (chief)' if is_chief() else ''}")
        return strategy
    try:  # tpu
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RecipeError(f"Received `distribute.strategy='tpu'` but no TPU is reachable "
                          f"({str(error).splitlines()[0]}); set distribute.tpu to its name or grpc:// address, or "
                          "choose another strategy.") from None
    strategy = tf.distribute.TPUStrategy(resolver)
    log(f"[distribute] TPU with {strategy.num_replicas_in_sync} cores")
    return strategy


def is_chief() -> bool:
    """Whether this process writes outputs: no TF_CONFIG, task `chief`, or `worker` 0 of a cluster without one."""
    config = tf_config()
    task = config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not config.get("cluster", {}).get(
        "chief")
