"""The learner component: distils the student from batches sampled out of the replay store and
publishes versioned student weights beside the data. Ray-free; the head wraps it."""
from __future__ import annotations

import io
import time

import torch

from .config import LearnerConfig
from .losses import build_loss
from .policy_files import PolicyBundle, PolicySpec, module_from_bytes, module_to_bytes
from .prefetch import Prefetcher
from .store import ReplayStore, StoreAddress
from .networks import build_network
from .rate_limit import SampleToInsertLimiter

LIMITER_SYNC_UPDATES = 4  # one Redis round trip per this many updates keeps both sides current


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Learner:
    def __init__(self, config: LearnerConfig, store_address: StoreAddress, student_spec: PolicySpec,
                 teacher_output_kind: str, limiter: SampleToInsertLimiter | None = None):
        torch.manual_seed(config.seed)
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.device = pick_device(config.device)
        self.student_spec = student_spec
        self.student = build_network(student_spec.network, student_spec.obs_shape, student_spec.num_actions).to(self.device)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.loss_fn = build_loss(config.loss, teacher_output_kind, config.temperature, config.student_temperature)
        self.store = ReplayStore.from_address(store_address)
        self.prefetcher: Prefetcher | None = None
        self.limiter = limiter or SampleToInsertLimiter(min_size_to_sample=config.batch_size, samples_per_insert=32.0)
        self.updates = 0
        self.samples = 0
        # The limiter compares with what this store received since we connected (a resumed run
        # starts with an empty store but a restored sample count).
        self.limiter_samples = 0
        self.published_version = -1

    def _ensure_prefetcher(self) -> None:
        if self.prefetcher is None:
            cfg = self.config
            self.prefetcher = Prefetcher(self.store, cfg.batch_size, cfg.chunks_per_sample, cfg.prefetch_batches,
                                         cfg.prefetch_threads, self.device, cfg.seed + 7919)

    def _update(self, batch: dict[str, torch.Tensor]) -> float:
        student_out = self.student(batch["obs"])
        loss = self.loss_fn(student_out, batch["teacher_out"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        self.updates += 1
        self.samples += len(batch["obs"])
        return loss.item()

    def train(self, duration_s: float) -> dict:
        """Update for about ``duration_s`` seconds; waits (not over-samples) while data is short."""
        cfg = self.config
        start = time.perf_counter()
        deadline = start + duration_s
        inserted = self.store.sync_sampled(self.limiter_samples)
        losses: list[float] = []
        wait_input_s = wait_limiter_s = 0.0
        while time.perf_counter() < deadline:
            if not self.limiter.can_sample(inserted, self.limiter_samples, cfg.batch_size):
                pause_start = time.perf_counter()
                time.sleep(0.01)
                inserted = self.store.sync_sampled(self.limiter_samples)
                wait_limiter_s += time.perf_counter() - pause_start
                continue
            self._ensure_prefetcher()
            fetch_start = time.perf_counter()
            batch = self.prefetcher.get()
            wait_input_s += time.perf_counter() - fetch_start
            losses.append(self._update(batch))
            self.limiter_samples += cfg.batch_size
            if self.updates % LIMITER_SYNC_UPDATES == 0:
                inserted = self.store.sync_sampled(self.limiter_samples)
            if self.updates % cfg.publish_every_updates == 0:
                self.publish()
        self.store.sync_sampled(self.limiter_samples)
        elapsed = time.perf_counter() - start
        return {
            "updates": self.updates,
            "samples": self.samples,
            "loss": sum(losses) / len(losses) if losses else None,
            "updates_in_call": len(losses),
            "replay_ratio": self.limiter_samples / max(1, inserted),
            "call_s": elapsed,
            "wait_input_frac": wait_input_s / elapsed,
            "wait_limiter_frac": wait_limiter_s / elapsed,
            "device": self.device.type,
        }

    def publish(self) -> int:
        self.store.publish_weights(self.updates, module_to_bytes(self.student))
        self.published_version = self.updates
        return self.updates

    def student_bundle(self) -> PolicyBundle:
        return PolicyBundle.from_module(self.student_spec, self.student)

    def get_state(self) -> dict:
        """Everything a snapshot needs, as plain bytes and numbers (no live objects)."""
        optimizer_bytes = io.BytesIO()
        torch.save(self.optimizer.state_dict(), optimizer_bytes)
        return {"student": self.student_bundle(), "optimizer": optimizer_bytes.getvalue(),
                "updates": self.updates, "samples": self.samples}

    def load_state(self, student_weights: bytes, optimizer_state: bytes | None, updates: int, samples: int) -> None:
        restored = module_from_bytes(self.student_spec, student_weights, "snapshot student weights")
        self.student.load_state_dict(restored.state_dict())
        if optimizer_state is not None:
            state = torch.load(io.BytesIO(optimizer_state), map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(state)
        self.updates, self.samples = updates, samples

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        self.store.close()
