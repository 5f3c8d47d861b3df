"""The parity gate's thresholds and which output each one gates (torch-free).

The exporter gates with this table and the loader refuses a bundle whose recorded report is
looser than it or contradicts itself, so both sides must read the same numbers: they live here,
where the robot computer can import them.
"""

from __future__ import annotations

from collections.abc import Mapping

# Outputs of the whole-plan and whole-reaction comparisons (graph outputs follow graph_specs).
PLAN_OUTPUTS = ("candidates", "q", "chunk_robot_units")
REACT_OUTPUTS = ("slice",)

# Keys that are lower bounds (a recorded value may be higher, never lower); every other key is
# an upper bound (a recorded value may be lower, never higher).
LOWER_BOUNDS = frozenset({"graph_cosine", "action_cosine"})

# A key absent at a precision is not gated there.
THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {
        "graph_cosine": 0.9999,
        "graph_max_abs": 1e-4,
        "action_cosine": 0.9999,
        "action_max_abs": 1e-4,
        "q_max_abs": 1e-4,
        # Joint targets in rad (the gripper in fraction_open). Measured: ≤ 3e-6 on tiny and
        # small. 1e-4 keeps fp32's usual margin and is far below anything a robot can resolve.
        "robot_units_max_abs": 1e-4,
        "choice_margin": 2e-4,
    },
    "fp16": {
        "graph_cosine": 0.999,
        "action_cosine": 0.99,
        # Q's meaning is its ranking, and untrained (tiny, small) critics put the best two of
        # five candidates only 0.002-0.037 apart, so a tolerance near 1e-2 would let fp16 error
        # reorder them unnoticed. Measured fp16 error: ≤ 1.4e-4 (tiny and small, |Q| ≤ 0.25).
        # 5e-3 is 35 times that, and five fp16 rounding spacings at |Q| = 1, room for a trained
        # critic's larger values; a 1.5× weight in the value graph already exceeds it.
        "q_max_abs": 5e-3,
        # 1e-2 rad is 0.57°, about 1 cm at the end of a 1 m arm: less than System 1 re-plans,
        # and two orders below the distance between candidates (≥ 1.6 rad apart on tiny and
        # small), so a swapped candidate cannot pass. Measured: ≤ 5.2e-4 rad on tiny and small,
        # 20 times below; a 5 % error in one expert_step weight matrix gives 1.6e-2.
        "robot_units_max_abs": 1e-2,
        "choice_margin": 1e-2,
    },
}
# The choice gate applies where PyTorch's best and second-best Q differ by more than
# `choice_margin` = 2 × `q_max_abs`: if every Q is within `q_max_abs` of PyTorch's, such a pair
# cannot swap, so a different choice there is an error, not a near tie.


def gate_keys(group: str, output: str) -> tuple[str | None, str | None]:
    """(cosine key, max-abs key) that gate `output` of `group` (a graph name, plan or react)."""
    if group == "plan" and output == "q":
        # Cosine cannot see a ranking flip: swapping two Q values keeps it near 1.
        return None, "q_max_abs"
    if group == "plan" and output == "chunk_robot_units":
        # Cosine of absolute joint targets is dominated by the home-pose offset.
        return None, "robot_units_max_abs"
    if group in ("plan", "react"):
        return "action_cosine", "action_max_abs"
    return "graph_cosine", "graph_max_abs"


def output_passes(
    thresholds: Mapping[str, float], group: str, output: str, cosine: float, max_abs_err: float
) -> bool:
    cos_key, abs_key = gate_keys(group, output)
    if cos_key in thresholds and not cosine >= thresholds[cos_key]:
        return False
    return not (abs_key in thresholds and not max_abs_err <= thresholds[abs_key])


def describe_gate(thresholds: Mapping[str, float], group: str, output: str) -> str:
    cos_key, abs_key = gate_keys(group, output)
    parts = []
    if cos_key in thresholds:
        parts.append(f"cosine ≥ {thresholds[cos_key]:g}")
    if abs_key in thresholds:
        parts.append(f"max abs ≤ {thresholds[abs_key]:g}")
    return ", ".join(parts) or "not gated"


def looser_than_exporter(precision: str, recorded: Mapping[str, float]) -> list[str]:
    """Keys of `recorded` that are missing, unknown or looser than THRESHOLDS[precision]."""
    table = THRESHOLDS[precision]
    known = {key for t in THRESHOLDS.values() for key in t}
    problems = [f"{k} missing (needs {v:g})" for k, v in table.items() if k not in recorded]
    for key, value in recorded.items():
        if key not in known:
            problems.append(f"{key} is not a threshold this runtime knows")
            continue
        if key not in table:
            continue  # gates more than this precision requires: stricter, not looser
        lower = key in LOWER_BOUNDS
        if not (value >= table[key] if lower else value <= table[key]):
            problems.append(f"{key} {value:g} is looser than {table[key]:g}")
    return problems
