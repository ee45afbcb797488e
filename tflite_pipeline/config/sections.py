"""The recipe's sections: one frozen, validated dataclass each, with the vocabulary they accept.

Unknown keys and out-of-range values raise `RecipeError` naming the field, e.g.
"Received `train.epochs=0`; expected an integer >= 1." docs/recipe-reference.md is generated from these
classes (field comments included): keep a field's comment next to it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tflite_pipeline.errors import RecipeError

BUNDLED_DATA = "<bundled>"
MOBILENET_V2 = "mobilenet_v2"   # model.source: build the MobileNetV2 here instead of loading a file
NORMALIZATIONS = ("minus_one_to_one", "zero_to_one", "raw", "mean_std")
AUTO_NORMALIZATION = "auto"   # raw pixels when the model normalizes its own input, else minus_one_to_one
IO_DTYPES = ("int8", "uint8")
# exported by default; `pixels` is int8 with the normalization folded in: uint8 pixels in (scale 1, zero point 0),
# uint8 scores out, so an app copies the bytes and MediaPipe Tasks (which takes no int8 input) can run it
VARIANTS = ("float32", "int8", "pixels")
# on request: float16 weights; int8 weights with float activations; int16 activations with int8 weights
EXTRA_VARIANTS = ("float16", "dynamic", "int16x8")
ALL_VARIANTS = VARIANTS + EXTRA_VARIANTS
CALIBRATED_VARIANTS = ("int8", "pixels", "int16x8")           # the variants converted with a representative dataset
MIN_CALIBRATION_SAMPLES = 10                        # fewer images give int8 ranges too noisy to trust


def _require(ok: bool, section: str, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise RecipeError(f"Received `{section}.{name}={value!r}`; expected {expected}.")


class Section:
    """Mixin: `from_dict` that rejects unknown keys and coerces lists to tuples, and `to_dict`."""

    section: ClassVar[str]
    fine_tune: ClassVar[bool] = False   # an `enabled` section whose stage changes the model after the baseline

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Section:
        if not isinstance(data, Mapping):
            raise RecipeError(f"Received `{cls.section}` = {data!r}; expected a table of settings.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"Unknown key `{cls.section}.{unknown[0]}`; known keys in [{cls.section}]: "
                              f"{', '.join(sorted(known))}.")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in data.items():
            values[key] = _coerce(value, hints[key], f"{cls.section}.{key}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn TOML values into the declared type (lists -> tuples, ints -> floats), or raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecipeError as error:
                errors.append(error)
        raise errors[0]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"Received `{where}={value!r}`; expected a table of `key = value` pairs.")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(k, key_type, where): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"Received `{where}={value!r}`; expected a list.")
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(item, item_type, where) for item in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or
                                           (hint is int and isinstance(value, bool))):
        raise RecipeError(f"Received `{where}={value!r}`; expected a {hint.__name__}.")
    return value


@dataclass(frozen=True)
class ModelConfig(Section):
    """The float baseline: a MobileNetV2 built here, or a Keras model file of yours (`source = path`)."""

    section: ClassVar[str] = "model"
    source: str = MOBILENET_V2
    name: str = ""               # file stem of the outputs; default: "mobilenet_v2" or the model file's stem
    alpha: float = 0.35          # MobileNetV2 width multiplier
    input_size: int = 64         # square input resolution
    weights: str = "none"        # "none" (random init), "imagenet" (needs network once) or a weights .h5 path
    dropout: float = 0.2
    bn_momentum: float = 0.9     # Keras' 0.999 leaves from-scratch models at chance in inference mode
    safe_mode: bool = True       # refuse model files with Lambda layers (their code runs on load); false: trusted only

    def __post_init__(self) -> None:
        _require(0.0 < self.alpha <= 1.4, self.section, "alpha", self.alpha, "a width multiplier in (0, 1.4]")
        _require(self.input_size >= 32, self.section, "input_size", self.input_size, "an integer >= 32")
        _require(0.0 <= self.dropout < 1.0, self.section, "dropout", self.dropout, "a value in [0, 1)")
        _require(0.0 < self.bn_momentum < 1.0, self.section, "bn_momentum", self.bn_momentum,
                 "a value in (0, 1); 0.9 suits short from-scratch training")


@dataclass(frozen=True)
class DataConfig(Section):
    """An image-folder dataset: `root/<split>/<class>/*.png|jpg`, class order from `root/labels.txt`."""

    section: ClassVar[str] = "data"
    root: str = BUNDLED_DATA     # "<bundled>" is representative_data/ (Fashion-MNIST) in this repository
    train: str = "train"
    validation: str = "validation"
    calibration: str = "calibration"
    labels: str = "labels.txt"   # relative to root; when absent, classes are the sorted folder names
    # false (default): a file that is not a decodable image fails the run, naming it. true: such files are
    # skipped (each is fully decoded while listing), counted and named in the report
    skip_bad_images: bool = False
    # training batches in file order / seeded-shuffle order (false: parallel decoding may reorder them; faster on
    # folders of large, unevenly sized images)
    deterministic: bool = True


@dataclass(frozen=True)
class PreprocessConfig(Section):
    """How pixels become model input. The input size comes from the model itself."""

    section: ClassVar[str] = "preprocess"
    # "auto": raw pixels (0-255) when the model normalizes its own input (a Rescaling or Normalization layer,
    # preprocess_input's op layers at the input), else minus_one_to_one (MobileNetV2's [-1, 1])
    normalization: str = AUTO_NORMALIZATION
    mean: tuple[float, ...] = ()   # per channel, on the [0, 1] scale (normalization = "mean_std")
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _require(self.normalization in (AUTO_NORMALIZATION, *NORMALIZATIONS), self.section, "normalization",
                 self.normalization, f"one of {AUTO_NORMALIZATION}, {', '.join(NORMALIZATIONS)}")
        if self.normalization == "mean_std":
            _require(len(self.mean) in (1, 3) and len(self.std) == len(self.mean), self.section, "mean",
                     self.mean, "1 or 3 values, with as many `std` values, for normalization = 'mean_std'")
            _require(all(s > 0 for s in self.std), self.section, "std", self.std, "values > 0")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Fine-tuning of the float baseline (Adam with cosine decay)."""

    section: ClassVar[str] = "train"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    augment: bool = True         # random horizontal flips
    # TensorFlow op determinism: training stages give bit-identical weights for identical inputs (slower;
    # process-wide once on). Conversion and verification are deterministic either way.
    deterministic: bool = False

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, self.section, "epochs", self.epochs, "an integer >= 0 (0 skips training)")
        _require(self.batch_size >= 1, self.section, "batch_size", self.batch_size, "an integer >= 1")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate,
                 "a value in (0, 1)")


@dataclass(frozen=True)
class ConvertConfig(Section):
    """TFLite outputs. `int8` is strict full-integer: TFLITE_BUILTINS_INT8 only, per-channel weights."""

    section: ClassVar[str] = "convert"
    variants: tuple[str, ...] = VARIANTS
    io_dtype: str = "int8"               # dtype of the int8 model's input and output tensors
    calibration_samples: int = 300      # representative images drawn from the calibration split
    # convert in a spawned child process (TensorFlow's converter keeps ~10 MiB per call; a child returns it to
    # the OS): for long-lived processes that run many recipes. Same bytes; a few seconds more per run
    isolate: bool = False
    # embed TFLite metadata (labels, normalization) in every .tflite, for MediaPipe Tasks and the support library
    metadata: bool = True

    def __post_init__(self) -> None:
        _require(set(self.variants) <= set(ALL_VARIANTS), self.section, "variants", self.variants,
                 f"a list drawn from {list(ALL_VARIANTS)}")
        _require(len(set(self.variants)) == len(self.variants), self.section, "variants", self.variants,
                 "no repeated variant")
        _require(self.io_dtype in IO_DTYPES, self.section, "io_dtype", self.io_dtype, f"one of {IO_DTYPES}")
        _require(self.calibration_samples >= MIN_CALIBRATION_SAMPLES, self.section, "calibration_samples",
                 self.calibration_samples, f"an integer >= {MIN_CALIBRATION_SAMPLES} (200 or more is advisable)")


ACTIVATION_RANGES = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class PTQConfig(Section):
    """Post-training int8 fidelity: what the converter is given between calibration and quantization.

    The converter calibrates as always; the chosen activation ranges, weight integers and biases are written into
    its calibrated model, and its own quantizer produces the `.tflite` (read back: the integers must be the chosen
    ones). Applies to every post-training int8 model of the run (not QAT models, which carry their own ranges).
    """

    section: ClassVar[str] = "ptq"
    ranges: str = "minmax"          # activation ranges: minmax (the converter's), percentile, mse (per tensor)
    percentile: float = 99.99       # with ranges = "percentile": the share of values kept inside the range
    adaround: bool = False          # fit each weight's rounding (up or down) to the layer's outputs (AdaRound)
    adaround_iterations: int = 300  # optimizer steps per layer
    bias_correction: bool = False   # cancel the mean output shift the weight rounding causes, per channel
    samples: int = 128              # calibration images the statistics and the fits run on

    def __post_init__(self) -> None:
        _require(self.ranges in ACTIVATION_RANGES, self.section, "ranges", self.ranges,
                 f"one of {ACTIVATION_RANGES}")
        _require(90.0 <= self.percentile < 100.0, self.section, "percentile", self.percentile,
                 "a percentage in [90, 100)")
        _require(self.adaround_iterations >= 1, self.section, "adaround_iterations", self.adaround_iterations,
                 "an integer >= 1")
        _require(self.samples >= MIN_CALIBRATION_SAMPLES, self.section, "samples", self.samples,
                 f"an integer >= {MIN_CALIBRATION_SAMPLES}")

    @property
    def active(self) -> bool:
        """Whether anything differs from the converter's own post-training quantization."""
        return self.ranges != "minmax" or self.adaround or self.bias_correction

    def techniques(self) -> tuple[str, ...]:
        """Short names of what is on, in the order applied: `("mse ranges", "adaround", "bias correction")`."""
        return tuple(name for name, on in ((f"{self.ranges} ranges", self.ranges != "minmax"),
                                           ("adaround", self.adaround), ("bias correction", self.bias_correction))
                     if on)


# LiteRT's kernel sets: XNNPACK (the default delegate on phones and here), the built-in optimized kernels,
# and the reference kernels (slow, plain integer arithmetic: what the QAT simulation models most closely)
KERNELS = ("xnnpack", "builtin", "reference")


@dataclass(frozen=True)
class VerifyConfig(Section):
    """The parity gate: every .tflite against the float Keras model on the validation split."""

    section: ClassVar[str] = "verify"
    max_top1_drop: float = 0.5     # percentage points of top-1 the .tflite may lose vs the Keras model
    min_agreement: float = 0.98    # fraction of images where the .tflite's top-1 equals Keras' top-1
    batch_size: int = 64
    num_threads: int = 2
    kernels: str = "xnnpack"       # LiteRT kernels: xnnpack (what phones run), builtin, reference

    def __post_init__(self) -> None:
        _require(self.kernels in KERNELS, self.section, "kernels", self.kernels, f"one of {KERNELS}")
        _require(0.0 <= self.max_top1_drop <= 100.0, self.section, "max_top1_drop", self.max_top1_drop,
                 "percentage points in [0, 100]")
        _require(0.0 <= self.min_agreement <= 1.0, self.section, "min_agreement", self.min_agreement,
                 "a fraction in [0, 1]")
        _require(self.batch_size >= 1, self.section, "batch_size", self.batch_size, "an integer >= 1")
        _require(self.num_threads >= 1, self.section, "num_threads", self.num_threads, "an integer >= 1")


PRUNE_STRUCTURES = ("unstructured", "2:4")
PRUNE_SCHEDULES = ("polynomial", "constant")
# tfmot 0.8 prunes/clusters no DepthwiseConv2D kernel: wrapping one would silently do nothing
PRUNABLE_TYPES = ("Conv2D", "Dense")


def _check_layers(section: str, layer_types: tuple[str, ...]) -> None:
    _require(bool(layer_types) and set(layer_types) <= set(PRUNABLE_TYPES), section, "layer_types", layer_types,
             f"a non-empty list drawn from {list(PRUNABLE_TYPES)} (tfmot does not prune or cluster depthwise "
             "kernels)")


@dataclass(frozen=True)
class LowRankConfig(Section):
    """Low-rank factorization: each selected 1x1 Conv2D or Dense layer becomes two thinner ones from a truncated
    SVD of its kernel, then the model is fine-tuned (distilled when [distill] is on). A layer is factored only
    when its rank is below the break-even C_in*C_out/(C_in+C_out); the report lists the others and why.
    """

    section: ClassVar[str] = "lowrank"
    fine_tune: ClassVar[bool] = True
    enabled: bool = False
    energy: float = 0.9             # per layer: the smallest rank keeping this fraction of sum(s^2)
    mac_budget: float = 0.0         # keep at most this fraction of the MACs (energy solved for); 0 = use `energy`
    multiple: int = 8               # ranks are rounded up to multiples of this (SIMD width)
    epochs: int = 6
    learning_rate: float = 1e-3
    layers: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = PRUNABLE_TYPES
    exclude: tuple[str, ...] = ()   # the classifier (as wide as the output) is always left whole

    def __post_init__(self) -> None:
        _require(0.0 < self.energy <= 1.0, self.section, "energy", self.energy, "a fraction in (0, 1]")
        _require(0.0 <= self.mac_budget < 1.0, self.section, "mac_budget", self.mac_budget,
                 "a fraction of the MACs to keep in (0, 1), or 0 to use `energy`")
        _require(self.multiple >= 1, self.section, "multiple", self.multiple, "an integer >= 1")
        _require(self.epochs >= 1, self.section, "epochs", self.epochs, "an integer >= 1")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate, "a value in (0, 1)")
        _check_layers(self.section, self.layer_types)


@dataclass(frozen=True)
class PruneConfig(Section):
    """Magnitude pruning fine-tune (tfmot `prune_low_magnitude`), then `strip_pruning`.

    Layers pruned: those of `layer_types` whose name matches one of `layers` (regular expressions;
    empty = all) and none of `exclude` (default: MobileNetV2's stem convolution and the classifier).
    """

    section: ClassVar[str] = "prune"
    fine_tune: ClassVar[bool] = True
    enabled: bool = False
    structure: str = "unstructured"      # or "2:4": two of every four weights zero (fixed 50%)
    schedule: str = "polynomial"         # polynomial decay from initial to target, or constant target
    initial_sparsity: float = 0.5
    target_sparsity: float = 0.8
    epochs: int = 6
    end_fraction: float = 0.7            # the target is reached at this fraction of the fine-tune steps
    learning_rate: float = 5e-4
    layers: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = PRUNABLE_TYPES
    exclude: tuple[str, ...] = ("^Conv1$", "^predictions$")

    def __post_init__(self) -> None:
        _require(self.structure in PRUNE_STRUCTURES, self.section, "structure", self.structure,
                 f"one of {PRUNE_STRUCTURES}")
        _require(self.schedule in PRUNE_SCHEDULES, self.section, "schedule", self.schedule,
                 f"one of {PRUNE_SCHEDULES}")
        _require(0.0 <= self.target_sparsity < 1.0, self.section, "target_sparsity", self.target_sparsity,
                 "a value in [0, 1)")
        _require(0.0 <= self.initial_sparsity <= self.target_sparsity, self.section, "initial_sparsity",
                 self.initial_sparsity, f"a value in [0, target_sparsity={self.target_sparsity}]")
        _require(self.epochs >= 1, self.section, "epochs", self.epochs, "an integer >= 1")
        _require(0.0 < self.end_fraction <= 1.0, self.section, "end_fraction", self.end_fraction, "a value in (0, 1]")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate, "a value in (0, 1)")
        _check_layers(self.section, self.layer_types)


@dataclass(frozen=True)
class ClusterConfig(Section):
    """Weight clustering (weight sharing) fine-tune with tfmot, then `strip_clustering`."""

    section: ClassVar[str] = "cluster"
    fine_tune: ClassVar[bool] = True
    enabled: bool = False
    clusters: int = 16
    preserve_sparsity: bool = True  # zero weights (from [prune], or already in the model) stay zero: prune -> cluster
    epochs: int = 3
    learning_rate: float = 1e-4
    layers: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = PRUNABLE_TYPES
    exclude: tuple[str, ...] = ("^Conv1$", "^predictions$")

    def __post_init__(self) -> None:
        _require(2 <= self.clusters <= 256, self.section, "clusters", self.clusters,
                 "an integer in [2, 256] (int8 weights have 256 levels)")
        _require(self.epochs >= 1, self.section, "epochs", self.epochs, "an integer >= 1")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate, "a value in (0, 1)")
        _check_layers(self.section, self.layer_types)


@dataclass(frozen=True)
class QATConfig(Section):
    """Quantization-aware fine-tune. The scheme follows the earlier stages: prune-preserving (PQAT)
    after pruning, cluster-preserving (CQAT) after clustering, else tfmot's default 8-bit scheme."""

    section: ClassVar[str] = "qat"
    fine_tune: ClassVar[bool] = True
    enabled: bool = False
    epochs: int = 2
    learning_rate: float = 1e-4
    # start the activation ranges from the calibration split (false: tfmot's [-6, 6], moved 0.1% per step)
    calibrate_ranges: bool = True

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, self.section, "epochs", self.epochs, "an integer >= 1")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate, "a value in (0, 1)")


@dataclass(frozen=True)
class DistillConfig(Section):
    """Knowledge distillation during the fine-tunes: the float baseline teaches the student.

    loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
    """

    section: ClassVar[str] = "distill"
    enabled: bool = False
    temperature: float = 4.0
    alpha: float = 0.3

    def __post_init__(self) -> None:
        _require(self.temperature > 0.0, self.section, "temperature", self.temperature, "a value > 0")
        _require(0.0 <= self.alpha <= 1.0, self.section, "alpha", self.alpha, "a value in [0, 1]")


CHANNEL_CRITERIA = ("activation", "bn_scale", "l1")


@dataclass(frozen=True)
class ChannelsConfig(Section):
    """Channel pruning: remove whole channels (MobileNetV2's expanded channels, stem, head), rebuild a thinner
    model with the surviving weights, then fine-tune it (with the float baseline as teacher when [distill]
    is on). Unlike magnitude pruning, the `.tflite` gets smaller and faster on dense kernels.

    `mac_budget` is the target: keep at most this fraction of the MACs (0.5 = "2x cheaper"); the global
    `ratio` is then solved for. `ratios` fixes the ratio of the groups whose source layer matches a pattern.
    """

    section: ClassVar[str] = "channels"
    fine_tune: ClassVar[bool] = True
    enabled: bool = False
    criterion: str = "activation"   # activation (mean |activation| x consumer weight norm, on data), bn_scale, l1
    ratio: float = 0.5              # fraction of each group's channels removed (ignored when mac_budget > 0)
    ratios: dict[str, float] = field(default_factory=dict)   # e.g. {"^block_1[3-6]_expand$" = 0.3}
    mac_budget: float = 0.0         # keep at most this fraction of the model's MACs; 0 = use `ratio`
    multiple: int = 8               # kept channel counts are multiples of this (SIMD width)
    min_channels: int = 8
    exclude: tuple[str, ...] = ()   # groups (by source layer name, regular expressions) left whole
    samples: int = 256              # calibration images scored by the activation criterion
    epochs: int = 6
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        _require(self.criterion in CHANNEL_CRITERIA, self.section, "criterion", self.criterion,
                 f"one of {CHANNEL_CRITERIA}")
        _require(0.0 <= self.ratio < 1.0, self.section, "ratio", self.ratio, "a fraction in [0, 1)")
        for pattern, ratio in self.ratios.items():
            _require(0.0 <= ratio < 1.0, self.section, f"ratios.{pattern}", ratio, "a fraction in [0, 1)")
        _require(0.0 <= self.mac_budget < 1.0, self.section, "mac_budget", self.mac_budget,
                 "a fraction of the MACs to keep in (0, 1), e.g. 0.5 for half, or 0 to use `ratio`")
        _require(self.multiple >= 1, self.section, "multiple", self.multiple, "an integer >= 1 (8 suits SIMD)")
        _require(self.min_channels >= 1, self.section, "min_channels", self.min_channels, "an integer >= 1")
        _require(self.samples >= 1, self.section, "samples", self.samples, "an integer >= 1")
        _require(self.epochs >= 0, self.section, "epochs", self.epochs, "an integer >= 0 (0: no fine-tune)")
        _require(0.0 < self.learning_rate < 1.0, self.section, "learning_rate", self.learning_rate, "a value in (0, 1)")


STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")


@dataclass(frozen=True)
class DistributeConfig(Section):
    """tf.distribute for every training stage (baseline, channels, pruning, clustering, QAT, distillation).
    `train.batch_size` is the GLOBAL batch, split across the replicas. See `model/distribute.py` and docs/scaling.md."""

    section: ClassVar[str] = "distribute"
    strategy: str = "default"    # default (one device) | mirrored (all local GPUs, else the logical CPUs) |
    #                              multi-worker (MultiWorkerMirroredStrategy from TF_CONFIG) | tpu
    cpu_devices: int = 0         # split the CPU into this many logical devices (mirrored without a GPU); 0: as is
    tpu: str = ""                # strategy = "tpu": its name or grpc:// address ("" = the local TPU)

    def __post_init__(self) -> None:
        _require(self.strategy in STRATEGIES, self.section, "strategy", self.strategy, f"one of {STRATEGIES}")
        _require(self.cpu_devices == 0 or self.cpu_devices >= 2, self.section, "cpu_devices", self.cpu_devices,
                 "0 (leave the CPU as one device) or an integer >= 2")
        _require(not self.tpu or self.strategy == "tpu", self.section, "tpu", self.tpu,
                 "empty unless `distribute.strategy='tpu'`")


DIAGNOSE_MODES = ("off", "on_failure", "always")


@dataclass(frozen=True)
class DiagnoseConfig(Section):
    """TFLite's quantization debugger on the post-training int8 models, and the accuracy-budgeted fallback.

    The fallback keeps layers in float one step at a time (a separate `*_fallback.tflite`; the strict
    int8 model is unchanged) until the top-1 drop vs the Keras source is <= `max_top1_drop`.
    """

    section: ClassVar[str] = "diagnose"
    mode: str = "on_failure"         # off | on_failure (an int8 model failed the gate or the budget) | always
    samples: int = 64                # calibration images the per-layer comparison runs on
    fallback: bool = False           # build the float-fallback variant when an int8 model misses the budget
    max_top1_drop: float = 0.3       # the fallback's budget: percentage points vs the Keras source
    max_float_fraction: float = 0.1  # at most this fraction of the quantized layers may stay float

    def __post_init__(self) -> None:
        _require(self.mode in DIAGNOSE_MODES, self.section, "mode", self.mode, f"one of {DIAGNOSE_MODES}")
        _require(self.samples >= MIN_CALIBRATION_SAMPLES, self.section, "samples", self.samples,
                 f"an integer >= {MIN_CALIBRATION_SAMPLES}")
        _require(0.0 <= self.max_top1_drop <= 100.0, self.section, "max_top1_drop", self.max_top1_drop,
                 "percentage points in [0, 100]")
        _require(0.0 < self.max_float_fraction <= 1.0, self.section, "max_float_fraction", self.max_float_fraction,
                 "a fraction in (0, 1]")
        _require(not (self.fallback and self.mode == "off"), self.section, "fallback", self.fallback,
                 "false when `diagnose.mode='off'` (the fallback ranks layers by the diagnosis)")


@dataclass(frozen=True)
class MicroConfig(Section):
    """After verification, export every int8 model for TensorFlow Lite for Microcontrollers into `micro/<model>/`
    (what `tflite-pipeline export-micro` does): C++ sources, the smallest tensor arena measured in TFLM, TFLM vs
    LiteRT on the validation images, and the flash and RAM budget checked (a miss is a failed optional step, exit
    13; the verified models are kept)."""

    section: ClassVar[str] = "micro"
    enabled: bool = False
    board: str = ""             # a preset: nano33ble, esp32s3, stm32h743 ("" for none); docs/micro.md
    flash_kb: float = 0.0       # flash the model may take, KB (0: the board's, or no limit)
    ram_kb: float = 0.0         # RAM the tensor arena may take, KB (0: the board's, or no limit)
    margin: float = 0.10        # added to the measured arena
    max_images: int = 0         # validation images TFLM runs (0: all)

    def __post_init__(self) -> None:
        from tflite_pipeline.export.boards import BOARDS

        _require(self.board in ("", *BOARDS), self.section, "board", self.board, f"one of {sorted(BOARDS)} or ''")
        _require(self.flash_kb >= 0, self.section, "flash_kb", self.flash_kb, "a size in KB >= 0 (0: the board's)")
        _require(self.ram_kb >= 0, self.section, "ram_kb", self.ram_kb, "a size in KB >= 0 (0: the board's)")
        _require(0 <= self.margin <= 1, self.section, "margin", self.margin, "a fraction in [0, 1]")
        _require(self.max_images >= 0, self.section, "max_images", self.max_images, "an integer >= 0 (0: all)")

    def budget(self):
        """The `MicroBudget` these settings give (None: no limit)."""
        from tflite_pipeline.export.boards import micro_budget

        return micro_budget(self.board or None, self.flash_kb or None, self.ram_kb or None)


@dataclass(frozen=True)
class BenchConfig(Section):
    """Latency of every exported `.tflite` in the run report (LiteRT, batch 1, median of `runs` invokes)."""

    section: ClassVar[str] = "bench"
    enabled: bool = True
    threads: int = 1
    runs: int = 30
    warmup: int = 5

    def __post_init__(self) -> None:
        _require(self.threads >= 1, self.section, "threads", self.threads, "an integer >= 1")
        _require(self.runs >= 1, self.section, "runs", self.runs, "an integer >= 1")
        _require(self.warmup >= 0, self.section, "warmup", self.warmup, "an integer >= 0")
