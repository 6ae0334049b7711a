"""sample_many / log_likelihood_many over 2 and 3 gloo processes equal one process exactly.

The processes are spawned here (``torch.multiprocessing.spawn``, a file store in a temporary
directory, one thread each). Two spawns serve every test: a 2-process run whose last job is killed
(a worker ends itself with ``os._exit`` mid-solve, the way a killed node does; ``spawn`` then
terminates the other), and a 3-process run that resumes that job with another world size.

The workers start from a fork server that has imported torch and sdediff once (``forkserver`` with a
preload), not as fresh interpreters each: on a loaded 2-core machine each fresh import costs seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _dist_workers import gmm_model, run_task, run_tasks, stoppable_model

import sdediff as sd

pytestmark = pytest.mark.slow

START = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
if START == "forkserver":
    # the fork server imports these once (what the workers need, found through the inherited PYTHONPATH or
    # the installed package); symbolic_shapes is imported lazily by the likelihood's batched vjp
    mp.get_context("forkserver").set_forkserver_preload(
        ["torch.distributed", "torch.fx.experimental.symbolic_shapes", "sdediff"])

N = 23
SAMPLERS = {
    "deterministic": {"solver": "dpm++2m", "steps": 4, "seed": 5, "batch_size": 4},
    "stochastic": {"solver": "euler_maruyama", "steps": 4, "seed": 5, "batch_size": 4},
}
KILLED = {"solver": "ancestral", "steps": 3, "seed": 11, "batch_size": 3}
LIKELIHOOD = {"batch_size": 2, "seed": 2, "solver": "rk4", "steps": 4, "divergence": "hutchinson", "n_probes": 2}


def _spawn(world: int, tasks: list[dict], root: Path, tag: str) -> tuple[dict, BaseException | None]:
    results = root / f"results-{tag}"
    results.mkdir()
    err = None
    try:
        mp.start_processes(run_tasks, args=(world, str(root / f"store-{tag}"), tasks, str(results)), nprocs=world,
                           join=True, start_method=START)
    except mp.ProcessExitedException as e:  # the killed run
        err = e
    got = {}
    for task in tasks:
        for rank in range(world):
            f = results / f"{task['name']}-{rank}.pt"
            if f.exists():
                got[(task["name"], rank)] = torch.load(f, weights_only=False)
    return got, err


def _finished_shards(out: Path) -> int:
    return sum(1 for side in out.glob("samples-*.json")
               if (out / json.loads(side.read_text())["file"]).exists())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dist")
    data = sd.sample_many(gmm_model(), 9, (2,), batch_size=9, steps=6, seed=99, progress=False).x.double()
    # the reference: one process, no group
    ref = {name: run_task({"kind": "sample", "n": N, "kwargs": kw}, 0)["x"] for name, kw in SAMPLERS.items()}
    ref_lik = run_task({"kind": "likelihood", "data": data, "kwargs": LIKELIHOOD}, 0)
    one = sd.sample_many(stoppable_model(None), N, (2,), progress=False, **KILLED)
    nfe_per_shard = one.stats.nfe // one.stats.shards
    assert nfe_per_shard * one.stats.shards == one.stats.nfe  # a fixed-step solver: same NFE per shard

    out_two, out_killed, out_lik = root / "two", root / "killed", root / "lik"
    tasks2 = [{"name": f"s-{k}", "kind": "sample", "n": N, "kwargs": kw} for k, kw in SAMPLERS.items()]
    tasks2 += [{"name": "lik", "kind": "likelihood", "data": data, "kwargs": LIKELIHOOD},
               {"name": "lik-ds", "kind": "likelihood", "data": data, "dataset": True, "kwargs": LIKELIHOOD},
               {"name": "lik-out", "kind": "likelihood", "data": data, "kwargs": {**LIKELIHOOD, "out": str(out_lik)}},
               {"name": "s-out", "kind": "sample", "n": N,
                "kwargs": {**SAMPLERS["deterministic"], "out": str(out_two)}},
               # rank 1 dies in the solve of its third shard
               {"name": "killed", "kind": "sample", "n": N, "stoppable": True, "die_rank": 1,
                "die_after": 2 * nfe_per_shard + 1, "kwargs": {**KILLED, "out": str(out_killed)}}]
    two, err2 = _spawn(2, tasks2, root, "two")
    finished_before = _finished_shards(out_killed)
    complete_before = json.loads((out_killed / "manifest.json").read_text())["complete"]
    tasks3 = [{"name": f"s-{k}", "kind": "sample", "n": N, "kwargs": kw} for k, kw in SAMPLERS.items()]
    tasks3 += [{"name": "resume", "kind": "sample", "n": N, "stoppable": True,
                "kwargs": {**KILLED, "out": str(out_killed)}},
               {"name": "load-two", "kind": "load", "out": str(out_two)},
               {"name": "lik-resume", "kind": "likelihood", "data": data,
                "kwargs": {**LIKELIHOOD, "out": str(out_lik)}}]
    three, err3 = _spawn(3, tasks3, root, "three")
    return {"ref": ref, "ref_lik": ref_lik, "ref_killed": one.x, "two": two, "three": three, "err2": err2,
            "err3": err3, "finished_before": finished_before,
            "complete_before": complete_before, "shards": one.stats.shards, "out_killed": out_killed}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_processes_equal_one_process(runs: dict, world: int, sampler: str) -> None:
    assert runs["err3"] is None
    got = runs["two" if world == 2 else "three"]
    ref = runs["ref"][sampler]
    assert ref.shape == (N, 2)
    for rank in range(world):
        res = got[(f"s-{sampler}", rank)]
        assert torch.equal(res["x"], ref), f"rank {rank} of {world}"
        assert res["stats"].world_size == world and res["stats"].computed == res["stats"].shards
    # the check can fail: another seed gives other samples
    other = sd.sample_many(gmm_model(), N, (2,), progress=False, **{**SAMPLERS[sampler], "seed": 6}).x
    assert not torch.equal(other, ref)


def test_likelihood_two_ranks_equal_one_process(runs: dict) -> None:
    ref = runs["ref_lik"]
    for name, world in (("lik", 2), ("lik-ds", 2), ("lik-out", 2), ("lik-resume", 3)):
        for rank in range(world):
            res = runs["two" if world == 2 else "three"][(name, rank)]
            assert torch.equal(res["logp"], ref["logp"]) and torch.equal(res["bpd"], ref["bpd"]), (name, rank)
            assert res["mean_logp"] == ref["mean_logp"]
            assert res["stats"].nfe_total == ref["stats"].nfe  # NFE summed over the ranks
            # shards written by 2 processes, resumed (read, broadcast) by 3
            assert res["stats"].resumed == (res["stats"].shards if name == "lik-resume" else 0)
    # per-example probes matter: another seed changes the Hutchinson estimates
    data = sd.sample_many(gmm_model(), 9, (2,), batch_size=9, steps=6, seed=99, progress=False).x.double()
    other = sd.log_likelihood_many(gmm_model(), data, progress=False, **{**LIKELIHOOD, "seed": 3})
    assert not torch.equal(other.logp, ref["logp"])


def test_killed_job_resumed_by_another_world_size(runs: dict) -> None:
    err = runs["err2"]
    assert err is not None and err.exit_code == 17, "the 2-process job was meant to be killed"
    shards, before = runs["shards"], runs["finished_before"]
    assert 0 < before < shards, f"the kill left {before} of {shards} shards; it should stop mid-job"
    assert not runs["complete_before"]
    for rank in range(3):
        res = runs["three"][("resume", rank)]
        assert res["stats"].resumed == before and res["stats"].computed == shards - before
        assert res["x"] is None
    x = sd.load_samples(runs["out_killed"])
    assert torch.equal(x, runs["ref_killed"])  # no index missing, duplicated or recomputed differently
    assert not list(runs["out_killed"].glob(".tmp-*"))
    manifest = json.loads((runs["out_killed"] / "manifest.json").read_text())
    assert manifest["complete"] and manifest["nfe"] == sd.sample_many(
        stoppable_model(None), N, (2,), progress=False, **KILLED).stats.nfe


def test_shards_written_by_two_load_in_three(runs: dict) -> None:
    for rank in range(3):
        assert torch.equal(runs["three"][("load-two", rank)]["x"], runs["ref"]["deterministic"])
