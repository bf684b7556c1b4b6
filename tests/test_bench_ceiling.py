"""`kd-system bench --only ceiling,system` and `--only feed`: the sections run end to end on real envs,
engines, Ray collectors and Redis, and write the headline keys at the top level of the JSON with
positive rates and finite ratios that agree with the sections' own figures; the headline engine is
the fastest one meeting the agreement floor. No timing asserts: rates depend on the machine."""
import json
import math
import multiprocessing
import statistics

import pytest

from kd_system.bench import ceiling
from kd_system.bench.context import shipped_teacher_dir
from kd_system.bench.engine_choice import choose_engine, headline, parse_engines
from kd_system.cli import main
from kd_system.errors import ConfigError

FLOOR = 0.995
HEADLINE = ("ceiling_states_per_s", "system_states_per_s", "system_vs_ceiling", "engine_forward_speedup",
            "engine_agreement", "engine_system_vs_ceiling", "engine_speedup")


def bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert main(["bench", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def figures(agreement: float, forward: float, ceiling_rate: float, system: float) -> tuple[dict, dict]:
    return ({"agreement": agreement, "forward_states_per_s": forward, "ceiling_states_per_s": ceiling_rate},
            {"agreement": agreement, "states_per_s": system})


def sections(**engines: tuple[dict, dict]) -> tuple[dict, dict]:
    return ({"engines": {name: pair[0] for name, pair in engines.items()}},
            {"engines": {name: pair[1] for name, pair in engines.items()}})


def test_the_headline_engine_is_the_fastest_that_meets_the_floor():
    ceiling_section, system_section = sections(
        torch=figures(1.0, 1000.0, 500.0, 400.0),
        onnxruntime=figures(0.999, 1500.0, 600.0, 540.0),
        **{"onnxruntime-int8": figures(0.99, 3000.0, 700.0, 650.0)})  # fastest, but below the floor
    top = headline(ceiling_section, system_section, FLOOR)
    assert top["engine"] == "onnxruntime"
    assert top["engine_forward_speedup"] == pytest.approx(1.5)
    assert top["engine_agreement"] == 0.999
    assert top["engine_system_vs_ceiling"] == pytest.approx(540 / 600)
    assert top["engine_speedup"] == pytest.approx(540 / 400)
    assert top["system_vs_ceiling"] == pytest.approx(400 / 500)
    assert (top["ceiling_states_per_s"], top["system_states_per_s"]) == (500.0, 400.0)
    # the same engine just at the floor qualifies and, being fastest, is chosen
    int8_at_floor = {name: dict(f) for name, f in ceiling_section["engines"].items()}
    int8_at_floor["onnxruntime-int8"]["agreement"] = FLOOR
    assert choose_engine(int8_at_floor, FLOOR, "forward_states_per_s") == "onnxruntime-int8"
    # only torch meets the floor: it is its own headline engine, speed-ups of one
    only_torch = headline(*sections(torch=figures(1.0, 1000.0, 500.0, 400.0),
                                    onnxruntime=figures(0.5, 9000.0, 900.0, 800.0)), FLOOR)
    assert only_torch["engine"] == "torch" and only_torch["engine_forward_speedup"] == 1.0
    # without the ceiling the system rate decides
    assert headline(None, system_section, FLOOR)["engine"] == "onnxruntime"
    assert choose_engine({"x": {"agreement": 0.5, "forward_states_per_s": 1.0}}, FLOOR, "forward_states_per_s") is None


def test_paired_rounds_give_the_headline_ratios():
    """Medians of per-round ratios replace the sweeps' ratios, and the top level's rates are torch's
    median round's, so that they make its ratio."""
    ceiling_section, system_section = sections(torch=figures(1.0, 1000.0, 500.0, 400.0),
                                               onnxruntime=figures(1.0, 2000.0, 600.0, 540.0))
    paired = {"rounds": 3, "engines": {
        "torch": {"system_vs_ceiling": 0.93, "ceiling_states_per_s": 450.0, "system_states_per_s": 418.5,
                  "forward_speedup": 1.0, "system_speedup": 1.0},
        "onnxruntime": {"system_vs_ceiling": 0.91, "ceiling_states_per_s": 550.0, "system_states_per_s": 500.5,
                        "forward_speedup": 2.1, "system_speedup": 1.3}}}
    top = headline(ceiling_section, system_section, FLOOR, paired)
    assert top["engine"] == "onnxruntime" and top["vs_ceiling_from"] == "median of 3 paired rounds"
    assert (top["system_vs_ceiling"], top["engine_system_vs_ceiling"]) == (0.93, 0.91)
    assert (top["engine_forward_speedup"], top["engine_speedup"]) == (2.1, 1.3)
    assert (top["ceiling_states_per_s"], top["system_states_per_s"]) == (450.0, 418.5)
    assert headline(ceiling_section, system_section, FLOOR)["vs_ceiling_from"] == "sweeps"


def test_the_median_round_is_a_real_round_with_an_even_count_too():
    """Its ratio is one round's own (the lower middle one for an even count), so its rates make it."""
    from kd_system.bench.paired import median_round

    rounds = [{"system_vs_ceiling": r} for r in (0.9, 1.1, 0.8, 1.0)]
    assert median_round(rounds) == 0 and median_round(rounds[:3]) == 0 and median_round(rounds[1:]) == 2
    assert median_round(rounds[:1]) == 0

def test_engines_option():
    assert parse_engines(None) == ("torch",)
    assert parse_engines("onnxruntime-int8,onnxruntime") == ("torch", "onnxruntime", "onnxruntime-int8")
    assert parse_engines("all") == ("torch", "torchscript", "onnxruntime", "onnxruntime-int8")
    with pytest.raises(ConfigError, match="--engines: unknown engine 'tensorrt'"):
        parse_engines("torch,tensorrt")


def check_headline(result: dict) -> None:
    for key in HEADLINE:
        assert math.isfinite(result[key]) and result[key] > 0, key
    ceil, system, paired = result["ceiling"], result["system"], result.get("paired")
    chosen = result["engine"]
    assert ceil["engines"][chosen]["meets_floor"] and result["engine_agreement"] >= FLOOR
    if paired is None:
        assert result["vs_ceiling_from"] == "sweeps"
        assert result["system_vs_ceiling"] == pytest.approx(result["system_states_per_s"] / result["ceiling_states_per_s"])
        assert result["engine_forward_speedup"] == pytest.approx(
            ceil["engines"][chosen]["forward_states_per_s"] / ceil["engines"]["torch"]["forward_states_per_s"])
        assert result["engine_speedup"] == pytest.approx(
            system["engines"][chosen]["states_per_s"] / system["engines"]["torch"]["states_per_s"])
    else:
        check_paired(result)
    env = ceil["env"]["steps_per_s"]
    for name, figures_ in ceil["engines"].items():
        forward = figures_["forward_states_per_s"]
        assert figures_["ceiling_states_per_s"] == pytest.approx(1 / (1 / env + 1 / forward))
        assert figures_["ceiling_states_per_s"] < min(env, forward)
        assert system["engines"][name]["states_per_s"] > 0
        assert 0.0 <= system["engines"][name]["host_idle_fraction"] <= 1.0
    for key in ("system_vs_ceiling", "engine_forward_speedup", "engine_agreement", "engine_system_vs_ceiling"):
        assert result["vs_ceiling"][key] == result[key] and isinstance(result["meets"][key], bool)


def check_paired(result: dict) -> None:
    """Every round of every engine has its own windows, and the headline ratios are their medians."""
    paired, chosen = result["paired"], result["engine"]
    assert result["vs_ceiling_from"] == f"median of {paired['rounds']} paired rounds"
    assert set(paired["engines"]) == set(result["system"]["engines"])
    torch = paired["engines"]["torch"]["rounds"]
    for name, e in paired["engines"].items():
        assert len(e["rounds"]) == paired["rounds"] == result["setup"]["rounds"]
        for r in e["rounds"]:
            assert r["ceiling_states_per_s"] == pytest.approx(1 / (1 / r["env_steps_per_s"] + 1 / r["forward_states_per_s"]))
            # the raw pair before and after the system window, averaged as times per state
            assert 1 / r["ceiling_states_per_s"] == pytest.approx((1 / r["ceiling_before"] + 1 / r["ceiling_after"]) / 2)
            assert r["system_vs_ceiling"] == pytest.approx(r["system_states_per_s"] / r["ceiling_states_per_s"])
            assert 0.0 <= r["system_host_idle"] <= 1.0  # read from the kernel over the system window
        mid = e["rounds"][e["median_round"] - 1]  # its rates make the headline ratio
        assert e["system_vs_ceiling"] == statistics.median_low(r["system_vs_ceiling"] for r in e["rounds"])
        assert e["system_vs_ceiling"] == mid["system_vs_ceiling"]
        assert (e["ceiling_states_per_s"], e["system_states_per_s"]) == (mid["ceiling_states_per_s"], mid["system_states_per_s"])
        assert e["forward_speedup"] == pytest.approx(statistics.median_low(
            r["forward_states_per_s"] / t["forward_states_per_s"] for r, t in zip(e["rounds"], torch)))
    assert result["system_vs_ceiling"] == paired["engines"]["torch"]["system_vs_ceiling"]
    assert result["system_states_per_s"] / result["ceiling_states_per_s"] == pytest.approx(result["system_vs_ceiling"])
    assert result["engine_system_vs_ceiling"] == paired["engines"][chosen]["system_vs_ceiling"]
    assert result["engine_forward_speedup"] == paired["engines"][chosen]["forward_speedup"]
    assert result["engine_speedup"] == paired["engines"][chosen]["system_speedup"]


@pytest.mark.slow
def test_ceiling_and_system_on_cartpole_with_an_engine_below_the_floor(tmp_path, capsys):
    """The int8 CartPole MLP disagrees with fp32 on a few per cent of states: measured, not chosen."""
    result = bench(tmp_path, "--env", "CartPole-v1", "--only", "ceiling,system", "--seconds", "0.2",
                   "--collectors", "1", "--engines", "onnxruntime-int8", "--rounds", "2")
    check_headline(result)
    assert result["paired"]["rounds"] == 2
    # the ceiling's timing processes are kept for the rounds, and closed when the bench ends
    assert not [p for p in multiprocessing.active_children() if p.name == "kd-bench-core"]
    int8 = result["ceiling"]["engines"]["onnxruntime-int8"]
    assert int8["heldout_states"] > 0 and 0 <= int8["agreement"] <= 1 and int8["kl"] >= 0
    if not int8["meets_floor"]:
        assert result["engine"] == "torch"
    assert result["ceiling"]["env"]["processes"] == result["ceiling"]["cores"]  # Gymnasium: a process per core
    table = capsys.readouterr().out
    assert "hardware ceiling, torch" in table and "onnxruntime-int8" in table
    assert "of 2)" in table and "median round (" in table and "paired torch: system / ceiling per round" in table
    assert "host idle in the system windows" in table


@pytest.mark.slow
def test_ceiling_and_system_on_pong_with_a_random_nature_teacher(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ceiling, "ENV_COUNTS", (4,))  # sizes only: ROM loads are the slow part here
    monkeypatch.setattr(ceiling, "BATCHES", (8,))
    result = bench(tmp_path, "--only", "feed,ceiling,system", "--seconds", "0.3", "--num-envs", "4",
                   "--collectors", "1", "--engines", "onnxruntime", "--rounds", "0")
    check_headline(result)
    assert "paired" not in result  # --rounds 0: the sweeps' own ratios
    check_feed(result)
    assert result["setup"]["env_id"] == "ALE/Pong-v5"  # the default env
    if not shipped_teacher_dir("ALE/Pong-v5").is_dir():
        assert result["setup"]["teacher"].startswith("random Nature-CNN")
    cores = result["ceiling"]["cores"]  # ale-py's vector threads itself: one process, or 1 or 2 per core
    layouts = {(r["processes"], r["threads"]) for r in result["ceiling"]["env"]["by_layout"].values()}
    assert layouts == {(1, cores), (cores, 1), (2 * cores, 1)}
    best = max(result["ceiling"]["env"]["by_layout"].values(), key=lambda r: r["steps_per_s"])
    assert result["ceiling"]["env"]["steps_per_s"] == best["steps_per_s"]
    assert set(result["system"]["engines"]) == {"torch", "onnxruntime"}
    assert result["system"]["engines"]["torch"]["collectors"] == 1
    assert "hardware ceiling, onnxruntime" in capsys.readouterr().out


def check_feed(result: dict) -> None:
    feed = result["feed"]
    for key in ("store_sampled_states_per_s", "fast_learner_fed_ratio", "real_updates_per_s",
                "fast_in_memory_updates_per_s", "fast_fed_updates_per_s", "store_sampled_states_per_s_pooled"):
        assert math.isfinite(feed[key]) and feed[key] > 0, key
    assert result["store_sampled_states_per_s"] == feed["store_sampled_states_per_s"]
    assert result["fast_learner_fed_ratio"] == pytest.approx(feed["fast_fed_updates_per_s"] / feed["fast_in_memory_updates_per_s"])
    assert feed["stand_in_update_s"] == pytest.approx(feed["real_update_s"] / 20)
    assert result["meets"]["fast_learner_fed_ratio"] in (True, False)


def test_feed_section_on_cartpole(tmp_path, redis_url, capsys):
    result = bench(tmp_path, "--env", "CartPole-v1", "--only", "feed", "--seconds", "0.3", "--redis-url", redis_url)
    check_feed(result)
    assert set(result["targets"]) == {"fast_learner_fed_ratio"}
    assert "faster learner" in capsys.readouterr().out


@pytest.mark.parametrize("args, fragment", [(["--engines", "tensorrt"], "--engines"),
                                            (["--collectors", "0"], "--collectors"),
                                            (["--collectors", "two"], "--collectors"),
                                            (["--rounds", "-1"], "--rounds")])
def test_bad_engine_or_collector_options_are_one_line(args, fragment, capsys):
    assert main(["bench", "--env", "CartPole-v1", "--only", "system", *args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kd-system: error:") and fragment in lines[0]
