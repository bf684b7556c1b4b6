import pytest

from kd_system.config import PACKAGE_DIR, RunConfig, load_config, to_dict, from_dict
from kd_system.errors import ConfigError


def test_default_config_distils_the_shipped_cartpole_teacher():
    config = load_config(None)
    assert config == RunConfig()
    assert config.env.id == "CartPole-v1"
    assert config.teacher.checkpoint == "shipped:cartpole-v1"


def test_overrides_are_typed():
    config = load_config(None, ["learner.lr=3e-4", "student.hidden=[32, 16]", "head.max_updates=10",
                                "store.redis_url=redis://:pw@localhost:6379/0", "learner.temperature=null"])
    assert config.learner.lr == 3e-4
    assert config.student.hidden == (32, 16)
    assert config.head.max_updates == 10
    assert config.learner.temperature is None


def test_round_trip_through_dict():
    config = load_config(None, ["student.hidden=[8]"])
    assert from_dict(to_dict(config)) == config


def test_config_is_frozen():
    with pytest.raises(Exception):
        RunConfig().learner.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("overrides, fragment", [
    (["learner.lr_typo=1"], "unknown key learner.lr_typo"),
    (["nosuchsection.x=1"], "unknown key nosuchsection"),
    (["learner.lr=fast"], "learner.lr: expected a number"),
    (["actors.num_actors=two"], "actors.num_actors: expected an integer"),
    (["learner.loss=hinge"], "learner.loss 'hinge' is unknown"),
    (["actors.epsilon=1.5"], "actors.epsilon must be in [0, 1]"),
    (["head.evals_after_target=-1"], "head.evals_after_target must be >= 0"),
    (["learner.precision=fp8"], "learner.precision must be auto"),
    (["store.redis_url=http://x"], "store.redis_url must start with"),
    (["limiter.min_size_to_sample=10000000"], "can never hold enough"),
    (["limiter.error_buffer=10"], "would deadlock"),
    (["head.target_score=null", "head.max_wall_s=null"], "stop condition"),
    (["learner.lr"], "expected section.key=value"),
])
def test_bad_values_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  id: CartPole-v1\n learner: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "malformed YAML at line" in str(info.value)


def test_unknown_key_in_file_names_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("learner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "learner.lrr" in str(info.value)


def test_missing_config_file_lists_shipped_names():
    with pytest.raises(ConfigError) as info:
        load_config("/no/such/file.yaml")
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("name", sorted(p.stem for p in (PACKAGE_DIR / "configs").glob("*.yaml")))
def test_shipped_configs_load_by_name(name):
    config = load_config(name)
    assert config.teacher.checkpoint.startswith("shipped:")


@pytest.mark.parametrize("name", sorted(p.stem for p in (PACKAGE_DIR / "configs").glob("*.yaml")))
def test_shipped_configs_reserve_no_more_than_two_cpus(name):
    from kd_system.launch.topology import check_cpu_reservations

    config = load_config(name)
    actors = config.actors.num_actors
    if actors != "auto":  # "auto" sizes itself to the cluster
        check_cpu_reservations(config, actors, len(config.task_list()), cluster_cpus=2.0)


def test_cpu_reservation_check_names_each_setting():
    from kd_system.launch.topology import check_cpu_reservations

    config = load_config("cartpole-v1")
    check_cpu_reservations(config, 2, 1, cluster_cpus=1.25)  # 2 x 0.25 + 0.5 + 0.25: exactly fits
    with pytest.raises(ConfigError, match=r"reserve 1.25 CPUs, but the local Ray cluster has 1"):
        check_cpu_reservations(config, 2, 1, cluster_cpus=1.0)


# ---- pydantic models, JSON Schema and the config command ---------------------------------------

def test_sections_refuse_a_misspelt_field_at_construction():
    from pydantic import ValidationError

    from kd_system.config import LearnerConfig

    with pytest.raises(ValidationError, match="lr_typo"):
        LearnerConfig(lr_typo=1.0)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"^unknown key learner\.lr_typo; valid keys here are: loss, "):
        from_dict({"learner": {"lr_typo": 1.0}})


def test_yaml_types_are_kept_strict():
    assert load_config(None, ["learner.lr=3e-4"]).learner.lr == 3e-4  # YAML 1.1 reads 3e-4 as a string
    assert load_config(None, ["limiter.samples_per_insert=8"]).limiter.samples_per_insert == 8.0
    assert isinstance(load_config(None, ["limiter.samples_per_insert=8"]).limiter.samples_per_insert, float)
    for overrides, fragment in ((["learner.batch_size=1.5"], "learner.batch_size: expected an integer, got 1.5"),
                                (["learner.batch_size=true"], "learner.batch_size: expected an integer, got True"),
                                (["learner.lr=true"], "learner.lr: expected a number"),
                                (["student.hidden=[64, 1.5]"], "student.hidden[1]: expected an integer"),
                                (["learner.batch_size=0"], "learner.batch_size must be >= 1"),
                                (["student.max_param_fraction=0"], "student.max_param_fraction must be in (0, 1]")):
        with pytest.raises(ConfigError) as info:
            load_config(None, overrides)
        assert fragment in str(info.value)


def test_config_is_hashable_and_an_empty_section_means_defaults():
    assert hash(load_config(None)) == hash(RunConfig())
    assert from_dict({"learner": None}) == RunConfig()  # YAML reads ``learner:`` with nothing under it as null


def test_config_schema_is_valid_json_schema_and_every_shipped_config_passes_it(capsys):
    import json

    import jsonschema
    import yaml

    from kd_system.cli import main

    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((PACKAGE_DIR / "configs").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))
    assert schema["properties"]["learner"]["$ref"].endswith("LearnerConfig")
    learner = schema["$defs"]["LearnerConfig"]["properties"]
    assert learner["batch_size"]["minimum"] == 1 and learner["lr"]["description"]
    assert not validator.is_valid({"learner": {"lrr": 0.1}})  # unknown keys are flagged in the editor too
    assert not validator.is_valid({"actors": {"epsilon": 1.5}})


def test_config_show_prints_yaml_that_loads_back_to_the_same_config(capsys, tmp_path):
    from kd_system.cli import main

    overrides = ["learner.lr=3e-4", "store.redis_url=env:KD_REDIS_URL"]
    assert main(["config", "show", "--config", "multitask-classic", *[a for o in overrides for a in ("--set", o)]]) == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(capsys.readouterr().out)
    assert load_config(str(shown)) == load_config("multitask-classic", overrides)
    assert "env:KD_REDIS_URL" in shown.read_text()  # a reference, never the secret it names


def test_config_show_errors_are_one_line_with_exit_status_2(capsys):
    from kd_system.cli import main

    assert main(["config", "show", "--set", "learner.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kd-system: error: unknown key learner.lrr")


def test_a_teacher_that_is_not_shipped_names_the_shipped_ones_and_both_ways_to_get_one():
    from kd_system.config import resolve_teacher_path

    with pytest.raises(ConfigError) as raised:
        resolve_teacher_path("shipped:no-such-game")
    message = str(raised.value)
    assert message.startswith("teacher.checkpoint: no shipped teacher 'no-such-game'") and "cartpole-v1" in message
    assert "kd-system teacher import" in message and "kd-system teacher train" in message and "\n" not in message
