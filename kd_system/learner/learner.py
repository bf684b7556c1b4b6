"""The learner component: distils the student from batches sampled out of the replay store and
publishes versioned student weights beside the data. Ray-free; the head wraps it.

With several tasks (multi-task distillation, Rusu et al. 2015 section 4.3) each task has its own
store namespace, teacher output kind and network view; the views share their hidden-to-hidden
layers, and every update takes one batch from each task and sums their losses.
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass

import torch

from kd_system.config import LearnerConfig
from kd_system.learner.losses import build_loss
from kd_system.policies.networks import SharedTrunkMLPs, build_network
from kd_system.policies.files import PolicyBundle, PolicySpec, module_from_bytes, module_to_bytes
from kd_system.learner.prefetch import Prefetcher
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.replay.channels import WeightsChannel
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable
from kd_system.types import LearnerState, TrainReport



@dataclass(frozen=True)
class LearnerTask:
    store: StoreAddress
    student_spec: PolicySpec
    label_kind: str  # the stored labels' kind: the teacher's output kind, or logits of lookahead labels
    label_temperature: float | None = None  # None: the learner's temperature (learner.temperature)


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


# learner.decoded_pool_chunks auto on CUDA. `kd-system bench --only feed` on Pong (2026-12-06): fresh
# chunks sample 19.6k states/s and a stand-in learner 20x faster than the CPU learner is fed 0.75;
# a pool of 16 samples 56k/s and feeds it 0.99. A CPU learner is fed without one, and fresh chunks
# put new states in front of it sooner.
GPU_POOL_CHUNKS = 16


def pool_chunks(setting: int | str, device: torch.device) -> int:
    if setting != "auto":
        return int(setting)
    return GPU_POOL_CHUNKS if device.type == "cuda" else 0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where it pays (CUDA tensor cores) unless asked otherwise; fp32 elsewhere.

    bf16 keeps fp32's exponent range, so unlike fp16 it needs no loss scaling."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_students(specs: list[PolicySpec]) -> list[torch.nn.Module]:
    """One network per task; with several tasks they share their trunk (see SharedTrunkMLPs)."""
    if len(specs) == 1:
        spec = specs[0]
        return [build_network(spec.network, spec.obs_shape, spec.num_actions)]
    network = specs[0].network
    obs_dims = [int(torch.Size(spec.obs_shape).numel()) for spec in specs]
    shared = SharedTrunkMLPs([(dim, spec.num_actions) for dim, spec in zip(obs_dims, specs)],
                             list(network["hidden"]), network.get("activation", "relu"))
    return list(shared.views)


def learning_rate(config: LearnerConfig, updates: int) -> float:
    """The learning rate for an update: constant, or cosine-decayed from lr to lr_final.

    A student that already matches its teacher on most states keeps moving at a constant rate
    (noisy minibatch gradients); a decayed rate lets it settle on the rare states it still gets wrong."""
    if config.lr_final is None:
        return config.lr
    progress = min(updates, config.lr_decay_updates) / config.lr_decay_updates
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * progress))


def unique_parameters(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        for param in module.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


class Learner:
    def __init__(self, config: LearnerConfig, tasks: list[LearnerTask], limiter: SampleToInsertLimiter | None = None):
        torch.manual_seed(config.seed)
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.tasks = list(tasks)
        self.device = pick_device(config.device)
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        self.students = [s.to(self.device) for s in build_students([t.student_spec for t in self.tasks])]
        self.parameters = unique_parameters(self.students)
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.loss_fns = [build_loss(config.loss, t.label_kind,
                                    config.temperature if t.label_temperature is None else t.label_temperature,
                                    config.student_temperature) for t in self.tasks]
        # Each task's table holds the rate limiter: its sample calls wait while data is short or the
        # learner is ahead. It counts what this learner sampled since it connected (a resumed run
        # starts with empty stores but a restored sample count).
        limiter = limiter or SampleToInsertLimiter(min_size_to_sample=config.batch_size, samples_per_insert=32.0)
        self.tables = [ReplayTable.from_address(t.store, limiter) for t in self.tasks]
        self.weights = [WeightsChannel(t.store) for t in self.tasks]
        self.prefetchers: list[Prefetcher] | None = None
        self._batches: list[dict[str, torch.Tensor] | None] = [None] * len(self.tasks)  # the next update's, per task
        self.updates = 0
        self.samples = 0
        self.trained_since_connect = 0  # states per task trained on by this learner process
        self.published_version = -1
        self._wipes_seen = 0  # store wipes (a restarted redis-server) the tables noticed, as last acted on

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def _ensure_prefetchers(self) -> None:
        if self.prefetchers is None:
            cfg = self.config
            chunks = pool_chunks(cfg.decoded_pool_chunks, self.device)
            pool = (chunks, float(cfg.pool_refresh_chunks)) if chunks else None
            self.prefetchers = [Prefetcher(store, cfg.batch_size, cfg.chunks_per_sample, cfg.prefetch_batches,
                                           cfg.prefetch_threads, self.device, cfg.seed + 7919 * (i + 1), pool)
                                for i, store in enumerate(self.tables)]

    def _update(self, batches: list[dict[str, torch.Tensor]]) -> float:
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            outputs = [student(batch["obs"]) for student, batch in zip(self.students, batches)]
        # Losses in fp32: the KL at tau=0.01 divides Q-values by 0.01, which bf16 would round badly.
        loss = sum(fn(out.float(), batch["teacher_out"]) for fn, out, batch in zip(self.loss_fns, outputs, batches))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:  # from the update count, so a resumed run continues the schedule
            group["lr"] = learning_rate(self.config, self.updates)
        torch.nn.utils.clip_grad_norm_(self.parameters, self.config.grad_clip_norm)
        self.optimizer.step()
        self.updates += 1
        self.samples += sum(len(batch["obs"]) for batch in batches)
        return loss.item()

    def train(self, duration_s: float, stop_at_updates: int | None = None) -> TrainReport:
        """Update for about ``duration_s`` seconds, or until ``stop_at_updates`` updates in all, so
        the head's snapshots and max_updates land on the update they name even when a second holds
        hundreds of updates. Waits (not over-samples) while data is short: the tables' limiter
        decides, and time spent waiting on a held-back table counts as limiter wait."""
        start = time.perf_counter()
        deadline = start + duration_s
        losses: list[float] = []
        wait_input_s = wait_limiter_s = 0.0
        self._ensure_prefetchers()
        while time.perf_counter() < deadline and (stop_at_updates is None or self.updates < stop_at_updates):
            fetch_start = time.perf_counter()
            for index, prefetcher in enumerate(self.prefetchers):
                if self._batches[index] is None:  # a batch got in an earlier call waits for the other tasks'
                    self._batches[index] = prefetcher.get(deadline - time.perf_counter())
            waited = time.perf_counter() - fetch_start
            if any(table.held_by_limiter for table in self.tables):
                wait_limiter_s += waited
            else:
                wait_input_s += waited
            if any(batch is None for batch in self._batches):
                continue  # still held back or short of data, until the deadline
            losses.append(self._update(self._batches))
            self._batches = [None] * len(self.tables)
            self.trained_since_connect += self.config.batch_size
            if self.updates % self.config.publish_every_updates == 0:
                self.publish()
        if (wipes := sum(table.wipes for table in self.tables)) != self._wipes_seen:
            # a restarted store lost the weights too: a collector started now must not act untrained
            self._wipes_seen = wipes
            self.publish()
        inserted = min(table.inserted for table in self.tables)
        elapsed = time.perf_counter() - start
        return TrainReport(
            updates=self.updates,
            samples=self.samples,
            loss=sum(losses) / len(losses) if losses else None,
            updates_in_call=len(losses),
            replay_ratio=self.trained_since_connect / max(1, inserted),
            corrupt_chunks=sum(table.corrupt_chunks for table in self.tables),
            call_s=elapsed,
            wait_input_frac=wait_input_s / elapsed,
            wait_limiter_frac=wait_limiter_s / elapsed,
            device=self.device.type,
            precision="bf16" if self.autocast_dtype is not None else "fp32",
        )

    def publish(self) -> int:
        """Each task's actors read their own view of the student from their task's namespace."""
        for channel, student in zip(self.weights, self.students):
            channel.publish(self.updates, module_to_bytes(student))
        self.published_version = self.updates
        return self.updates

    def student_bundles(self) -> list[PolicyBundle]:
        return [PolicyBundle.from_module(t.student_spec, s) for t, s in zip(self.tasks, self.students)]

    def get_state(self) -> LearnerState:
        """Everything a snapshot needs, as plain bytes and numbers (no live objects)."""
        optimizer_bytes = io.BytesIO()
        torch.save(self.optimizer.state_dict(), optimizer_bytes)
        return LearnerState(students=self.student_bundles(), optimizer=optimizer_bytes.getvalue(),
                            updates=self.updates, samples=self.samples)

    def load_state(self, student_weights: list[bytes], optimizer_state: bytes | None, updates: int, samples: int) -> None:
        if len(student_weights) != len(self.students):
            raise ValueError(f"snapshot has {len(student_weights)} task students, this run has {len(self.students)}")
        for task, student, weights in zip(self.tasks, self.students, student_weights):
            restored = module_from_bytes(task.student_spec, weights, "snapshot student weights")
            # shared trunk layers are written once per task with identical values
            student.load_state_dict(restored.state_dict())
        if optimizer_state is not None:
            state = torch.load(io.BytesIO(optimizer_state), map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(state)
        self.updates, self.samples = updates, samples
        self.publish()  # actors acting with the student switch to the restored one, not the lost updates
    def close(self) -> None:
        for prefetcher in self.prefetchers or []:
            prefetcher.close()
        for handle in [*self.tables, *self.weights]:
            handle.close()
