"""The ``learner`` section: the loss, the optimiser and where the learner runs."""
from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from kd_system.config_base import Number, Section, count_or_auto, one_of
from kd_system.learner.loss_spec import validate_loss_spec

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]


class LearnerConfig(Section):
    """The loss, the optimiser and where the learner runs."""
    loss: StrictStr = Field("kl", description=(
        "kl, mse, nll, maxgap, mi (mutual information) or adv (advantage mse), or a weighted sum such as "
        "kl+0.1*mi (kd_system/learner/losses.py)"))
    temperature: Number | None = Field(None, gt=0, description=(
        "teacher softmax temperature; null: 0.01 for Q-value teachers (Rusu et al. 2015), 1.0 for logits"))
    student_temperature: Number | None = Field(None, gt=0, description=(
        "null: the student is not softened; a number: Hinton's T²-scaled KL"))
    batch_size: StrictInt = Field(256, ge=1, description="states per update")
    lr: Number = Field(1e-3, gt=0, description="Adam learning rate")
    lr_final: Number | None = Field(None, gt=0, description=(
        "null: lr throughout; a number: cosine decay from lr to this ..."))
    lr_decay_updates: StrictInt = Field(10_000, ge=1, description="... over this many updates, then held")
    weight_decay: Number = Field(0.0, description="Adam's L2 weight decay")
    grad_clip_norm: Number = Field(10.0, description="clip the gradient's global norm to this")
    publish_every_updates: StrictInt = Field(200, description=(
        "updates between publishing the student's weights (read by student and mixed acting)"))
    prefetch_batches: StrictInt = Field(8, ge=1, description="batches sampled ahead of the update loop")
    prefetch_threads: StrictInt = Field(1, ge=1, description="threads sampling batches from the store")
    chunks_per_sample: StrictInt = Field(4, ge=1, description="chunks one batch draws its states from")
    decoded_pool_chunks: typing.Annotated[StrictInt, Field(ge=0)] | Literal["auto"] = Field("auto", description=(
        "0: each batch decodes chunks_per_sample fresh chunks; N: each prefetch thread keeps N decoded "
        "chunks and every batch draws from all of them (replay/pool.py): far less decoding per state; "
        "auto: 16 on a GPU, whose learner outruns fresh decoding, 0 on a CPU, fed without it"))
    pool_refresh_chunks: Number = Field(0.5, gt=0, description=(
        "with decoded_pool_chunks: chunks replaced in the pool per batch, on average; a chunk then stays "
        "about decoded_pool_chunks / pool_refresh_chunks batches (0.5: as kd-system bench --only feed measures it)"))
    device: Device = Field("auto", description="auto: cuda when the learner has a GPU")
    precision: Precision = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    num_cpus: Number = Field(0.5, gt=0, description="Ray CPU reservation of the learner")
    torch_threads: StrictInt = Field(1, description="torch threads of the learner")
    ray_resource: StrictStr | None = Field(None, description="a custom Ray node resource the learner requires")
    seed: StrictInt = 0

    @field_validator("loss")
    @classmethod
    def _loss_spec(cls, value: str) -> str:
        validate_loss_spec(value)  # its ConfigError passes through pydantic unchanged (it wraps ValueError only)
        return value

    @field_validator("decoded_pool_chunks", mode="before")
    @classmethod
    def _pool_or_auto(cls, value: object) -> object:
        return count_or_auto(value, "learner.decoded_pool_chunks", 0)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> object:
        if value not in typing.get_args(Device):
            raise ValueError(f"learner.device must be {one_of(typing.get_args(Device))}")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value: object) -> object:
        if value not in typing.get_args(Precision):
            raise ValueError("learner.precision must be auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
        return value

    @model_validator(mode="after")
    def _decay_downwards(self) -> LearnerConfig:
        if self.lr_final is not None and self.lr_final > self.lr:
            raise ValueError("learner.lr_final must be > 0 and <= learner.lr (or null for a constant learning rate)")
        return self
