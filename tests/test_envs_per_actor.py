"""actors.envs_per_actor: auto resolves per env kind (64 for Atari, 8 otherwise, from the bench's
figures in kd_system/envs/vector.py); a number is taken as given; bad values name the field."""
import pytest

from kd_system.config import load_config
from kd_system.envs.vector import ATARI_ENVS_PER_ACTOR, CLASSIC_ENVS_PER_ACTOR, envs_per_actor
from kd_system.errors import ConfigError
from kd_system.launch.topology import collector_settings


def test_auto_is_the_default_and_resolves_per_env_kind():
    assert load_config(None).actors.envs_per_actor == "auto"
    assert envs_per_actor("auto", "ALE/Pong-v5") == ATARI_ENVS_PER_ACTOR == 64
    assert envs_per_actor("auto", "CartPole-v1") == CLASSIC_ENVS_PER_ACTOR == 8
    assert envs_per_actor(12, "ALE/Pong-v5") == 12


def test_collectors_get_the_resolved_count_per_task():
    pong = load_config(None, ["env.id=ALE/Pong-v5"])
    assert collector_settings(pong, actor_id=0).num_envs == 64
    cartpole = load_config(None)
    assert collector_settings(cartpole, actor_id=0).num_envs == 8
    given = load_config(None, ["env.id=ALE/Pong-v5", "actors.envs_per_actor=16"])
    assert collector_settings(given, actor_id=0).num_envs == 16


def test_shipped_atari_configs_use_auto():
    for name in ("pong-v5", "breakout-v5"):
        assert load_config(name).actors.envs_per_actor == "auto"


@pytest.mark.parametrize("value", ["0", "many", "true", "2.5"])
@pytest.mark.parametrize("field", ["envs_per_actor", "env_groups"])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"actors.{field}={value}"])
    assert f"actors.{field}" in str(info.value)


def test_an_actors_groups_and_emulator_threads_follow_its_cpu_reservation(monkeypatch):
    """Groups get the actor's CPUs (rounded up) split between them, never the host's cores: a
    collector per CPU on a big node would otherwise run cores² threads. ``actors.env_groups``
    chooses one group or two."""
    from kd_system.envs import vector
    made = []
    monkeypatch.setattr(vector.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(vector, "AleGroup", lambda env_id, size, seed, num_threads: made.append((size, num_threads)))
    for cpus, groups, expected in ((None, None, [(32, 32)] * 2), (1.0, None, [(32, 1)] * 2), (0.25, None, [(32, 1)] * 2),
                                   (4.0, None, [(32, 2)] * 2), (8.5, None, [(32, 4)] * 2), (200.0, None, [(32, 32)] * 2),
                                   (1.0, 1, [(64, 1)]), (4.0, 1, [(64, 4)]), (4.0, 2, [(32, 2)] * 2)):
        made.clear()
        vector.actor_env_groups("ALE/Pong-v5", 64, 0, cpus, groups)
        assert made == expected, (cpus, groups)
    config = load_config(None, ["env.id=ALE/Pong-v5", "actors.num_cpus=3"])
    assert collector_settings(config, actor_id=0).num_cpus == 3.0
    assert collector_settings(config, actor_id=0).env_groups is None
    assert collector_settings(load_config(None, ["actors.env_groups=1"]), actor_id=0).env_groups == 1
