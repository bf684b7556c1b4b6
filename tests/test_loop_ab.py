"""loop_ab: two labelling-loop layouts timed window by window in turn, in spawned processes."""
import json

import pytest

from kd_system.bench.loop_ab import Layout, main, parse_layout


def test_layouts_are_parsed_over_the_defaults():
    assert parse_layout("") == Layout()
    assert parse_layout("envs=128,pin=1") == Layout(envs=128, groups=2, pin=True)
    assert parse_layout("groups=1,pin=no") == Layout(groups=1, pin=False)


@pytest.mark.parametrize("text, fragment", [("threads=2", "KEY one of envs, groups, pin"),
                                            ("envs=many", "envs takes a whole number"),
                                            ("groups=3", "groups 1 or 2"), ("envs", "KEY=VALUE"),
                                            ("pin=maybe", "pin takes 1 or 0")])
def test_bad_layouts_are_one_line_and_status_2(text, fragment, capsys):
    assert main(["--a", text, "--pairs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loop_ab: ") and fragment in err and "\n" not in err


def test_two_layouts_alternate_on_the_shipped_cartpole_teacher(tmp_path, capsys):
    out = tmp_path / "ab.json"
    assert main(["--env", "CartPole-v1", "--a", "envs=4", "--b", "envs=8,pin=1", "--pairs", "2", "--loops", "2",
                 "--seconds", "0.3", "--warmup", "0.1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(w["pair"], w["layout"]) for w in result["windows"]] == [(1, "a"), (1, "b"), (2, "b"), (2, "a")]
    assert all(w["states_per_s"] > 0 and (w["host_idle"] is None or 0 <= w["host_idle"] <= 1) for w in result["windows"])
    rates = {(w["pair"], w["layout"]): w["states_per_s"] for w in result["windows"]}
    assert result["b_over_a_by_pair"] == pytest.approx([rates[(p, "b")] / rates[(p, "a")] for p in (1, 2)])
    assert result["teacher"].startswith("shipped checkpoint") and result["b"] == "8 envs, 2 group(s), pinned"
    assert "median" in capsys.readouterr().out


def _affinities_after_loops() -> list[int]:
    """In a spawned process (pinning the test process would pin every thread it makes later): the
    cores each loop's process runs on, a pinned layout and then an unpinned one, as a reused worker."""
    import os

    from kd_system.bench.context import choose_teacher
    from kd_system.bench.loop_ab import labelling_loop
    from kd_system.envs.make import env_spaces

    bundle = choose_teacher("CartPole-v1", None, env_spaces("CartPole-v1")).bundle
    seen = []
    for layout in (Layout(envs=2, pin=True), Layout(envs=2)):
        step, close = labelling_loop("CartPole-v1", bundle, layout, 1, 1.0)
        assert step() == 2
        seen.append(len(os.sched_getaffinity(0)))
        close()
    return seen


def test_a_pinned_loop_runs_on_one_core_and_the_next_unpinned_one_on_all_again():
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_affinities_after_loops).result(timeout=120) == [1, len(os.sched_getaffinity(0))]
