"""The head's side of the replay store, all in one place: one namespace per task (the run's name,
suffixed with the task in multi-task runs), a private redis-server when no store.redis_url is set,
and the figure summary.json reports. Components open their own connections from the addresses."""
from __future__ import annotations

from kd_system.config import RunConfig
from kd_system.launch.preparation import Prepared
from kd_system.metrics import human, say
from kd_system.replay.channels import RunMetadata
from kd_system.replay.connection import StoreAddress, mask_url
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.table import ReplayTable


class RunStores:
    def __init__(self, config: RunConfig, run_name: str, prepared: Prepared, resumed: bool):
        self.redis: LocalRedisServer | None = None
        self.tables: list[ReplayTable] = []
        self.addresses: list[StoreAddress] = []
        try:
            self._open(config, run_name, prepared, resumed)
        except BaseException:  # the caller gets no object to close: stop what was started
            self.close()
            raise

    def _open(self, config: RunConfig, run_name: str, prepared: Prepared, resumed: bool) -> None:
        url = config.store.redis_url
        if url is None:
            self.redis = LocalRedisServer()
            url = self.redis.url
            say(f"no store.redis_url set: started a local redis-server at {url} (stopped at exit)")
        for task in prepared.tasks:
            run_id = run_name + (f".{task.name}" if prepared.multi_task else "")
            address = StoreAddress(url=url, run_id=run_id, max_corrupt_share=config.store.max_corrupt_share,
                                   capacity_states=config.store.capacity_states,
                                   chunk_states=config.store.chunk_states)
            table = ReplayTable.from_address(address)
            if config.store.clear_on_start and not resumed:
                table.clear()
            metadata = RunMetadata(address)
            metadata.write({"env_id": task.env_id, "teacher": task.teacher_path,
                            "student_network": task.student_spec.network})
            metadata.close()
            self.addresses.append(address)
            self.tables.append(table)
        namespaces = ", ".join(f"kd:{a.run_id}" for a in self.addresses)
        say(f"replay store: {mask_url(url)} namespace {namespaces}: capacity "
            f"{human(config.store.capacity_states)} states each")

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
