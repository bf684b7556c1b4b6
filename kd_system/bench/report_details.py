"""The lines under the bench's table that detail one section each: the teacher engines' fidelity,
the inference cases' per-engine figures, and Redis's side per node count."""
from __future__ import annotations


def rate(value: float) -> str:
    """States/s and the like: one decimal below 100, none above."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def idle_note(fraction: float | None, steal: float | None = None) -> str:
    """The host's idle (and the hypervisor's steal) share over a system window (bench/host_cpu.py)."""
    if fraction is None:
        return ""
    return (f"; host idle {fraction:.1%}" + (f", stolen {steal:.1%}" if steal else "")
            + " (idle near 0: the cores were busy, with our states, Ray and Redis, not waiting)")


def engine_line(results: dict) -> list[str]:
    section = results.get("system") or results.get("ceiling")
    if section is None:
        return []
    parts = []
    for name, e in section["engines"].items():
        if not e["heldout_states"]:
            parts.append(f"{name} (fp32 reference)")
            continue
        parts.append(f"{name} {e['agreement']:.2%}, KL(tau={e['kl_temperature']:g}) {e['kl']:.1e}"
                     + ("" if e["meets_floor"] else " BELOW the floor: measured, not chosen"))
    floor = results.get("engine_agreement_floor")
    chosen = results.get("engine")
    return [f"teacher engines, greedy agreement with fp32 torch on held-out states: {'; '.join(parts)}"
            + (f"; headline engine: {chosen} (fastest with agreement >= {floor:g})" if chosen else "")]


def inference_lines(section: dict) -> list[str]:
    """Per case, one row per network and engine: the figures the ratios above are made of."""
    header = ("", "engine", "p50 us", "p99 us", "states/s b64", "bytes", "b64 ÷ teacher eager", "teacher p50 ÷ p50")
    lines = [f"inference: {section['threads']['torch']} torch thread, {section['threads']['onnxruntime_intra_op']} "
             "onnxruntime thread, batch 64 too (per-core figures); real env observations through FrozenPolicy.outputs"]
    for name, case in section["cases"].items():
        rows = [header]
        for role in ("teacher", "student"):
            for engine, f in case[role]["engines"].items():
                rows.append((role, engine, f"{f['p50_us']:,.1f}", f"{f['p99_us']:,.1f}", rate(f["states_per_s"]),
                             f"{f['bytes']:,}", f"{f['states_per_s_vs_teacher_eager']:.2f}" if role == "student" else "",
                             f"{f['p50_gain_vs_teacher_eager']:.2f}" if role == "student" else ""))
        if "floor" in case:
            f = case["floor"]
            rows.append(("floor", "numpy matmul chain", f"{f['p50_us']:,.1f}", f"{f['p99_us']:,.1f}",
                         rate(f["states_per_s"]), "", "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        t, s = case["teacher"], case["student"]
        lines.append(f"  {name} ({case['env_id']}): teacher {t['source']} ({t['params']:,} params, "
                     f"{t['macs'] or 0:,} MACs), student {s['source']} ({s['params']:,} params, {s['macs'] or 0:,} MACs)"
                     + (": weights do not change latency" if case["random_student"] else ""))
        lines += ["    " + "  ".join(c.rjust(w) if i >= 2 else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    return lines


def nodes_lines(nd: dict) -> list[str]:
    """Redis's side per node count, and the estimate of how many nodes one Redis serves."""
    lines = [f"nodes {c}: Redis {rate(f['redis_written_states_per_s'])} states/s written, "
             f"{f['redis_in_mb_per_s']:.2f} MB/s in, {f['bytes_per_state'] or 0:,.0f} B/state stored, {f['redis_core_fraction']:.1%} of a core "
             f"(idle {f['redis_idle_core_fraction']:.1%})" + (", CPUs oversubscribed" if f["oversubscribed"] else "")
             for c, f in nd["by_nodes"].items()]
    e, a = nd["redis_estimate"], nd["assumptions"]
    cpu = (f"one Redis core ({e['redis_cpu_us_per_state']:.2f} us/state) serves ~{e['nodes_by_redis_cpu']:,.0f}"
           if e["nodes_by_redis_cpu"] else "Redis CPU per state too small to measure")
    lines.append(f"nodes estimate, a node of {rate(e['node_states_per_s'])} states/s ({a['node']}): {cpu}; a "
                 f"{a['network_gbit_s']:g} Gbit/s link at {e['wire_bytes_per_state']:,.0f} B/state serves "
                 f"~{e['nodes_by_network']:,.0f}; capacity {e['redis_nodes_capacity']:,} nodes, {e['bottleneck']} first "
                 f"({a['load']})")
    return lines
