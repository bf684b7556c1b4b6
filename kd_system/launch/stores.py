"""The head's side of the replay store, all in one place: one namespace per task (the run's name,
suffixed with the task in multi-task runs), a private redis-server when no store.redis_url is set
(restarted by check() if it dies), and the figure summary.json reports. Components open their own
connections from the addresses, and ride out a restart by retrying for store.reconnect_s."""
from __future__ import annotations

import signal
import time
from collections import deque

from kd_system.config import RunConfig
from kd_system.errors import StoreError
from kd_system.launch.preparation import Prepared
from kd_system.metrics import human, say
from kd_system.replay.channels import RunMetadata
from kd_system.replay.connection import StoreAddress, mask_url
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.table import ReplayTable

# A server that keeps dying (the OOM killer, a broken install) would make the run restart it
# forever while learning nothing: past this many restarts in the window, the run ends instead.
MAX_RESTARTS, RESTART_WINDOW_S = 3, 600.0


def _how_it_ended(status: int | None) -> str:
    if status is not None and status < 0:  # Popen's way of saying "killed by signal -status"
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class RunStores:
    def __init__(self, config: RunConfig, run_name: str, prepared: Prepared, resumed: bool):
        self.redis: LocalRedisServer | None = None
        self.tables: list[ReplayTable] = []
        self.addresses: list[StoreAddress] = []
        self._metadata: list[dict] = []  # per task: written again after a restart emptied the store
        self._restarted_at: deque[float] = deque(maxlen=MAX_RESTARTS)
        try:
            self._open(config, run_name, prepared, resumed)
        except BaseException:  # the caller gets no object to close: stop what was started
            self.close()
            raise

    def _open(self, config: RunConfig, run_name: str, prepared: Prepared, resumed: bool) -> None:
        url = config.store.redis_url
        if url is None:
            self.redis = LocalRedisServer()  # a random password, in its URL only
            url = self.redis.url
            say(f"no store.redis_url set: started a local redis-server at {mask_url(url)} (stopped at exit)")
        for task in prepared.tasks:
            run_id = run_name + (f".{task.name}" if prepared.multi_task else "")
            address = StoreAddress(url=url, run_id=run_id, max_corrupt_share=config.store.max_corrupt_share,
                                   capacity_states=config.store.capacity_states,
                                   chunk_states=config.store.chunk_states, reconnect_s=config.store.reconnect_s)
            table = ReplayTable.from_address(address)
            if config.store.clear_on_start and not resumed:
                table.clear()
            meta = {"env_id": task.env_id, "teacher": task.teacher_path, "student_network": task.student_spec.network}
            self._write_metadata(address, meta)
            self.addresses.append(address)
            self._metadata.append(meta)
            self.tables.append(table)
        namespaces = ", ".join(f"kd:{a.run_id}" for a in self.addresses)
        say(f"replay store: {mask_url(url)} namespace {namespaces}: capacity "
            f"{human(config.store.capacity_states)} states each")

    @staticmethod
    def _write_metadata(address: StoreAddress, meta: dict) -> None:
        metadata = RunMetadata(address)
        try:
            metadata.write(meta)
        finally:
            metadata.close()

    def check(self) -> str | None:
        """For the head's loop, about every 0.25 s: None while the store is fine (and always for a
        store.redis_url: the components' reconnect_s backoff rides out its outages). If the private
        redis-server died, restart it on the same port and password, so components reconnect to
        the same URL, write each task's metadata again and return a line for the console.
        Raises StoreError, with the fix, if it cannot be restarted or keeps dying."""
        server = self.redis
        if server is None or server.alive():
            return None
        how = _how_it_ended(server.returncode)
        where = f"redis-server (private, 127.0.0.1:{server.port})"
        now = time.monotonic()
        if len(self._restarted_at) == MAX_RESTARTS and now - self._restarted_at[0] < RESTART_WINDOW_S:
            raise StoreError(f"{where} died again ({how}), {MAX_RESTARTS + 1} times in "
                             f"{RESTART_WINDOW_S / 60:.0f} min: check the machine's memory (the kernel's "
                             "OOM killer: dmesg) or set store.redis_url to a Redis you run")
        self._restarted_at.append(now)
        try:
            server.restart()
            for address, meta in zip(self.addresses, self._metadata):
                self._write_metadata(address, meta)
        except StoreError as exc:
            raise StoreError(f"{where} died ({how}) and could not be restarted: {exc}") from None
        return (f"{where} died ({how}); restarted it on the same port: the replay buffer is lost and "
                "refills, checkpoints are untouched")

    def bytes_per_state(self) -> float:
        """Stored bytes per stored state over all tasks (summary.json's store_bytes_per_state)."""
        stats = [table.stats() for table in self.tables]
        states = sum(s["states_stored"] for s in stats)
        return sum(s["bytes_stored"] for s in stats) / max(1, states)

    def close(self) -> None:
        for table in self.tables:
            table.close()
        if self.redis is not None:
            self.redis.stop()
