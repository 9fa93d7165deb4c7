"""What a search starts from: the outputs it may write (checked before hours of work), and
with ``--resume`` the partial plan it continues and the greedy state that plan reached."""

from __future__ import annotations

from pathlib import Path

from ..decoder_stack import Stack, module_device
from ..errors import HopscotchError
from ..files import check_writable
from ..plan import ModelRef, Plan, load_plan
from ..torch_plan import BranchScales, plan_maps
from .greedy import SearchState, Step
from .options import SearchOptions
from .result import TOOL
from .units import BLOCK, kv_heads, replay


def check_outputs(
    out: Path, resume: Path | None, ref: ModelRef, options: SearchOptions, force: bool, also: tuple[Path, ...] = ()
) -> tuple[Plan | None, Path | None]:
    """The partial plan to continue and the calibration chats' file, after checking that no
    output (nor the files in ``also``) would overwrite what the user owns (before hours of work)."""
    prior = _resumable(resume, ref, options) if resume is not None else None
    for path in also:
        check_writable(path, force)
    if prior is None or out.resolve() != Path(resume).resolve():  # type: ignore[arg-type]
        check_writable(out, force)
    data_file = None
    if options.data is None:
        data_file = _recorded_data_file(prior, resume) if prior else out.with_name(out.stem + ".calibration.jsonl")
        if prior is None:
            check_writable(data_file, force)
    return prior, data_file


def _resumable(resume: Path, ref: ModelRef, options: SearchOptions) -> Plan:
    """The partial plan to continue, after checking it belongs to this model and these options."""
    plan = load_plan(resume)
    if plan.complete:
        raise HopscotchError(f"{resume} is a finished plan; start a new search instead of --resume")
    prov = plan.provenance
    if prov.get("tool") != TOOL or "search" not in prov:
        raise HopscotchError(f"{resume} was not written by {TOOL}; it cannot be resumed")
    plan.check_model(ref, fix="start a new search on this model (without --resume)")
    diff = options.selection_mismatch(prov["options"])
    if diff:
        raise HopscotchError(
            f"--resume {resume}: options differ from the interrupted run ({'; '.join(diff)}); rerun with the same ones"
        )
    n_kv = ref.n_kv_heads or 1
    done = replay([Step.from_json(s) for s in prov["search"]["steps"]], n_kv).saved
    target = options.kv_target(ref.n_layers, n_kv)
    if done > target:
        what = (f"{done // n_kv} blocks, more than --skips {options.skips}" if options.unit == BLOCK
                else f"{done} KV groups, more than the budget's {target}")  # fmt: skip
        raise HopscotchError(f"{resume} already removes {what}; give a larger budget or start a new search")
    return plan


def _recorded_data_file(prior: Plan, resume: Path | None) -> Path:
    """The calibration data the interrupted run's model wrote: a resumed run trains on the same."""
    assert resume is not None
    path = Path(resume).parent / prior.provenance["data"]["file"]
    if not path.is_file():
        raise HopscotchError(f"the calibration data of {resume} ({path}) is missing; start a new search")
    return path


def initial_state(prior: Plan | None, ref: ModelRef, options: SearchOptions, stack: Stack) -> SearchState:
    """Where the greedy steps start: nothing removed, or the partial plan's steps, scales and maps."""
    n_kv = kv_heads(stack.config)
    if prior is None:
        hidden = ref.hidden_size if options.granularity == "channel" else None
        return SearchState(BranchScales(ref.n_layers, hidden).to(stack.device), n_kv=n_kv)
    steps = [Step.from_json(s) for s in prior.provenance["search"]["steps"]]
    maps = {i: m.to(module_device(stack.layers[i])) for i, m in plan_maps(prior).items()}
    return SearchState(BranchScales.from_plan(prior).to(stack.device), steps, maps, n_kv)
