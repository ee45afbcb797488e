"""The model-changing stages of a run, in the order they run: each is a `Stage` (see `stage.py`).

    train (baseline) -> channels (thinned) -> lowrank (factored) -> prune (pruned) -> cluster (clustered)
        -> qat (qat / pqat / cqat / pcqat)

A new technique is one module with a `Stage` class and one entry here, at its place in the data flow.
"""

from __future__ import annotations

from tflite_pipeline.optimize.baseline import TrainBaseline
from tflite_pipeline.optimize.channels import ThinChannels
from tflite_pipeline.optimize.cluster import Cluster
from tflite_pipeline.optimize.lowrank import LowRank
from tflite_pipeline.optimize.prune import Prune
from tflite_pipeline.optimize.qat import QuantizeAware
from tflite_pipeline.optimize.stage import Stage, StageContext, StageOutput, StageRecord

STAGES: tuple[Stage, ...] = (TrainBaseline(), ThinChannels(), LowRank(), Prune(), Cluster(), QuantizeAware())


def active_stages(recipe) -> list[Stage]:
    """The recipe's enabled stages, in run order."""
    return [stage for stage in STAGES if stage.enabled(recipe)]


__all__ = ["STAGES", "Stage", "StageContext", "StageOutput", "StageRecord", "active_stages"]
