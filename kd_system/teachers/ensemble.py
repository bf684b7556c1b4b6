"""Several teachers of one task as one teacher: what a list in ``teacher.checkpoint`` builds.

The labels are the weighted mean of the members' tempered policies, sum_k w_k softmax(out_k / tau_k),
each tau_k resolved as the ``kl`` loss resolves it (learner.temperature, else 0.01 for a ``q``
member and 1 for a ``logits`` one). The result is an ordinary ``logits`` teacher
(``policies.networks.Ensemble``) in an ordinary PolicyBundle, so actors, the evaluator, lookahead,
snapshots and ``kd-system eval`` use it as they use any teacher; a run writes it into its directory
beside the student (as it does an imported teacher) and the student's card points there.

Sizes: the ensemble network's ``num_params`` is the sum of its members', what labelling runs. A
student's size is measured against the largest member instead (``size_reference``): a "7% student"
then means the same network for an ensemble as for its best member, which is the comparison an
ensemble is for, and ``student.max_param_fraction`` does not admit a k times larger student.
"""
from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Sequence

from kd_system.errors import ConfigError
from kd_system.learner.losses import resolve_temperature
from kd_system.policies.files import PolicyBundle, PolicySpec
from kd_system.policies.networks import Ensemble, count_parameters
from kd_system.policies.opaque import is_opaque


@dataclass(frozen=True)
class Member:
    source: str  # where it came from: a checkpoint directory, shipped:NAME's directory, an imported file
    bundle: PolicyBundle


def is_ensemble(spec: PolicySpec) -> bool:
    return spec.network.get("kind") == "ensemble"


def size_reference(spec: PolicySpec, num_params: int) -> int:
    """The parameters a student's share is measured against: the largest member for an ensemble."""
    return max(int(m["num_params"]) for m in spec.network["members"]) if is_ensemble(spec) else num_params


def member_sources(spec: PolicySpec) -> list[str]:
    return [str(m["source"]) for m in spec.network["members"]] if is_ensemble(spec) else []


def check_members(members: Sequence[Member], where: str) -> None:
    """One env, one action set, one observation format: else one line naming both list entries."""
    first = members[0].bundle.spec
    for index, member in enumerate(members):
        spec, name = member.bundle.spec, f"{where}[{index}] {member.source}"
        if is_opaque(spec.network) or is_ensemble(spec):
            raise ConfigError(f"{name} has network kind {spec.network['kind']!r}, which an ensemble cannot hold; list "
                              "mlp or cnn teachers (kd_system checkpoints, or SB3, CleanRL and RLlib imports)")
        if (spec.env_id, spec.num_actions) != (first.env_id, first.num_actions):
            raise ConfigError(f"{name} plays {spec.env_id} with {spec.num_actions} actions but {where}[0] "
                              f"{members[0].source} plays {first.env_id} with {first.num_actions}; an ensemble's "
                              f"teachers must play one env: list only teachers of {first.env_id}")
        if (tuple(spec.obs_shape), spec.obs_dtype, spec.protocol) != (tuple(first.obs_shape), first.obs_dtype,
                                                                      first.protocol):
            raise ConfigError(f"{name} takes {spec.obs_dtype} observations {tuple(spec.obs_shape)} (protocol "
                              f"{json.dumps(spec.protocol)}) but {where}[0] takes {first.obs_dtype} "
                              f"{tuple(first.obs_shape)} ({json.dumps(first.protocol)}); list teachers that read the "
                              "same observations")


def ensemble_bundle(members: Sequence[Member], weights: Sequence[float] | None, temperature: float | None,
                    where: str = "teacher.checkpoint") -> PolicyBundle:
    """The ensemble of ``members`` as one teacher; ``weights`` (None: equal) are normalised here,
    ``temperature`` is learner.temperature (None: each member's kind's default)."""
    if not members:
        raise ConfigError(f"{where} is an empty list; give one checkpoint or several")
    check_members(members, where)
    specs = [member.bundle.spec for member in members]
    modules = [member.bundle.module() for member in members]
    raw = [float(w) for w in weights] if weights is not None else [1.0] * len(members)
    shares = [w / sum(raw) for w in raw]
    temperatures = [resolve_temperature(temperature, spec.output_kind) for spec in specs]
    # the temperature the learner reads a logits teacher at: its softmax of our outputs is the mean policy
    output_temperature = resolve_temperature(temperature, "logits")
    params = [count_parameters(module) for module in modules]
    network = {"kind": "ensemble", "temperature": output_temperature, "weights": shares, "members": [
        {"network": spec.network, "output_kind": spec.output_kind, "temperature": tau, "num_params": count,
         "source": member.source} for member, spec, tau, count in zip(members, specs, temperatures, params)]}
    card = {"algorithm": "ensemble", "members": [
        {"source": member.source, "output_kind": spec.output_kind, "num_params": count, "weight": share,
         "eval_return_mean": spec.model_card.get("eval_return_mean")}
        for member, spec, count, share in zip(members, specs, params, shares)],
        "created": datetime.date.today().isoformat()}
    first = specs[0]
    spec = PolicySpec("teacher", first.env_id, tuple(first.obs_shape), first.obs_dtype, first.num_actions, "logits",
                      network, sum(params), card, dict(first.protocol))
    return PolicyBundle.from_module(spec, Ensemble(modules, temperatures, shares, output_temperature))


def markdown(spec: PolicySpec) -> str:
    """MODEL_CARD.md of an ensemble (the run writes it beside the ensemble's spec and weights)."""
    rows = "\n".join(
        f"| `{m['source']}` | {m['output_kind']} | {m['temperature']:g} | {m['num_params']:,} | {share:.3f} |"
        for m, share in zip(spec.network["members"], spec.network["weights"]))
    return f"""# Teacher: {spec.env_id} (ensemble of {len(spec.network['members'])})

The weighted mean of its members' tempered policies, sum_k w_k softmax(out_k / tau_k), as logits
read at temperature {spec.network['temperature']:g}. Parameters: {spec.num_params:,} in all (the sum of
the members); students are sized against the largest member, {size_reference(spec, spec.num_params):,}.

| member | output | tau | parameters | weight |
|---|---|---|---|---|
{rows}

Created {spec.model_card.get('created', 'unknown')}.
"""
