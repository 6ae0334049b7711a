"""sample_many / load_samples / log_likelihood_many in one process: seeding, batch-size invariance,
shards on disk, resumption, damaged shards and refused directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.distributed import index_seed, index_streams
from sdediff.noise import block_size

N = 70
SHAPE = (2,)


class CountingNet:
    """The exact GMM score behind a network that counts its calls and fails after ``limit`` of them
    (a job that dies mid-run); the same class name, so the same configuration, whatever the limit."""

    def __init__(self, limit: int | None = None) -> None:
        self.base = sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3).model(sd.VPSDE())
        self.limit = limit
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise RuntimeError("worker killed")
        return self.base.net(x, t)


def model(limit: int | None = None) -> sd.DiffusionModel:
    net = CountingNet(limit)
    return sd.DiffusionModel(net, net.base.process, "score", time_label=lambda t: t)


def many(m: sd.DiffusionModel | None = None, **kw) -> sd.distributed.SampleManyResult:
    args = {"n": 20, "sample_shape": SHAPE, "batch_size": 7, "solver": "dpm++2m", "steps": 3, "seed": 4,
            "progress": False, **kw}
    return sd.sample_many(m if m is not None else model(), **args)


# ------------------------------------------------------------------------------------------ seeding
def test_index_seed_is_the_documented_seedsequence_child() -> None:
    for seed, i in [(0, 0), (7, 3), (2**40, 12345)]:
        w = np.random.SeedSequence(seed).spawn(i + 1)[i].generate_state(2, dtype=np.uint32)
        assert index_seed(seed, i) == int(w[0]) + 2**32 * int(w[1])
    # no seed + index collisions, and distinct streams for neighbouring indices
    assert index_seed(0, 1) != index_seed(1, 0)
    assert len({index_seed(s, i) for s in range(4) for i in range(4)}) == 16
    with pytest.raises(ValueError, match="seed"):
        index_seed(-1, 0)


def test_index_streams_are_rows_of_the_documented_block_draws() -> None:
    """Index i is row i % k of the draw of block i // k, seeded with SeedSequence(seed, spawn_key=(b, k))."""
    k = block_size(SHAPE)
    for start, stop in [(0, 5), (k - 2, k + 3), (3 * k + 1, 3 * k + 2)]:
        streams = index_streams(9, start, stop, SHAPE)
        got = sd.noise.randn((stop - start, *SHAPE), generator=streams, dtype=torch.float64)
        for i in range(start, stop):
            b = i // k
            w = np.random.SeedSequence(9, spawn_key=(b, k)).generate_state(2, dtype=np.uint32)
            g = torch.Generator().manual_seed(int(w[0]) + 2**32 * int(w[1]))
            assert torch.equal(got[i - start], torch.randn((k, *SHAPE), generator=g, dtype=torch.float64)[i % k])
    # successive draws continue each block's stream; a wrong batch size is refused
    s = index_streams(9, 0, 4, SHAPE)
    a, b2 = (sd.noise.randn((4, *SHAPE), generator=s, dtype=torch.float64) for _ in range(2))
    assert not torch.equal(a, b2)
    with pytest.raises(ValueError, match="exactly those samples"):
        sd.noise.randn((3, *SHAPE), generator=index_streams(9, 0, 4, SHAPE))


@pytest.mark.parametrize("solver", ["dpm++2m", "euler_maruyama"])
def test_batch_sizes_give_the_same_samples(solver: str) -> None:
    runs = [sd.sample_many(model(), N, SHAPE, batch_size=b, solver=solver, steps=3, seed=1, progress=False).x
            for b in (1, 7, 64)]
    assert runs[0].shape == (N, *SHAPE)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    # sample i is sd.sample's sample with the noise streams of (seed, i)
    for i in (0, 33, N - 1):
        one = sd.sample(model(), (1, *SHAPE), solver=solver, steps=3, generator=index_streams(1, i, i + 1, SHAPE)).x
        assert torch.equal(one[0], runs[1][i])
    # the check can fail: one generator per batch (the plain loop) is not batch-size invariant
    plain = torch.cat([sd.sample(model(), (min(7, N - s), *SHAPE), solver=solver, steps=3, generator=1).x
                       for s in range(0, N, 7)])
    assert not torch.equal(plain, runs[1])


# ----------------------------------------------------------------------------------- shards on disk
def test_out_dir_round_trip_and_resume_skips_everything(tmp_path: Path) -> None:
    ref = many().x
    first = many(out=tmp_path)
    assert first.x is None and first.stats.computed == 3 and first.stats.resumed == 0
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["complete"] and man["nfe"] == first.stats.nfe > 0
    cfg = man["config"]
    assert (cfg["solver"], cfg["steps"], cfg["seed"], cfg["n"], cfg["sample_shape"], cfg["dtype"]) == \
        ("dpm++2m", 3, 4, 20, [2], "torch.float32")
    assert man["sdediff_version"] == sd.__version__ and "SeedSequence" in cfg["seed_derivation"]
    assert torch.equal(sd.load_samples(tmp_path), ref)
    m = model()
    again = many(m, out=tmp_path)
    assert again.stats.resumed == 3 and again.stats.computed == 0 and again.stats.nfe == 0 and m.net.calls == 0
    assert again.stats.nfe_total == first.stats.nfe


def test_damaged_shards_are_recomputed_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = many().x
    many(out=tmp_path)
    shards = sorted(tmp_path.glob("samples-*.pt"))
    raw = bytearray(shards[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # corrupted: same size, one byte flipped
    shards[0].write_bytes(bytes(raw))
    shards[1].write_bytes(shards[1].read_bytes()[:-9])  # truncated
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loaded.append(1) or real_load(f, *a, **k))
    with pytest.raises(ValueError, match=r"0\.\.6 \(tensor file corrupted.*7\.\.13 \(tensor file truncated"):
        sd.load_samples(tmp_path)
    assert not loaded  # nothing was unpickled: the damaged files failed their checks before torch.load
    (tmp_path / "samples-0000000014-0000000020.json").unlink()  # a shard whose sidecar never got written
    m = model()
    res = many(m, out=tmp_path)
    assert res.stats.computed == 3 and res.stats.resumed == 0 and m.net.calls > 0
    assert torch.equal(sd.load_samples(tmp_path), ref)


def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    ref = many(n=40, batch_size=6).x
    per_batch = many(n=6, batch_size=6).stats.nfe
    with pytest.raises(RuntimeError, match="worker killed"):
        many(model(limit=3 * per_batch + 1), n=40, batch_size=6, out=tmp_path)
    assert len(list(tmp_path.glob("samples-*.json"))) == 3
    with pytest.raises(ValueError, match=r"18\.\.23 \(missing\)"):
        sd.load_samples(tmp_path)
    res = many(model(), n=40, batch_size=6, out=tmp_path)
    assert (res.stats.resumed, res.stats.computed, res.stats.shards) == (3, 4, 7)
    x = sd.load_samples(tmp_path)
    assert x.shape == (40, *SHAPE) and torch.equal(x, ref)


def test_shards_hold_tensors_only(tmp_path: Path) -> None:
    many(out=tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    stem = "samples-0000000000-0000000007"
    side = json.loads((tmp_path / f"{stem}.json").read_text())
    torch.save({"x": torch.zeros(7, 2)} | {"evil": Evil()}, tmp_path / f"{stem}.pt")
    data = (tmp_path / f"{stem}.pt").read_bytes()
    import hashlib
    side.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())  # a forged, consistent sidecar
    (tmp_path / f"{stem}.json").write_text(json.dumps(side))
    with pytest.raises(ValueError, match="not tensors-only"):
        sd.load_samples(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------ refused directories
@pytest.mark.parametrize(("change", "named"), [({"steps": 4}, "steps"), ({"seed": 5}, "seed"),
                                               ({"solver": "ddim"}, "solver"), ({"n": 21}, "n: 20"),
                                               ({"batch_size": 5}, "batch_size"), ({"dtype": torch.float64}, "dtype")])
def test_other_configuration_is_refused_naming_it(tmp_path: Path, change: dict, named: str) -> None:
    many(out=tmp_path)
    with pytest.raises(ValueError, match=f"different configuration.*{named}"):
        many(out=tmp_path, **change)


def test_other_version_kind_or_orphan_shards_refused(tmp_path: Path) -> None:
    many(out=tmp_path)
    with pytest.raises(ValueError, match="'samples' shards, not 'likelihood'"):
        sd.log_likelihood_many(model(), torch.zeros(3, 2), batch_size=2, out=tmp_path, progress=False)
    man = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**man, "sdediff_version": "0.0.1"}))
    with pytest.raises(ValueError, match=r"sdediff 0\.0\.1"):
        many(out=tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="another configuration"):
        many(out=tmp_path, steps=5)
    assert many(out=tmp_path).stats.resumed == 3  # the same configuration adopts its own shards


# ------------------------------------------------------------------------------------------ bad input
def test_bad_counts_and_empty_jobs(tmp_path: Path) -> None:
    empty = many(n=0)
    assert empty.x.shape == (0, *SHAPE) and empty.stats.shards == 0
    many(n=0, out=tmp_path)
    assert sd.load_samples(tmp_path).shape == (0, *SHAPE)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        many(batch_size=0)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        many(n=-1)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        many(batch_size=2.0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        many(seed=-3)
    with pytest.raises(ValueError, match="sample_shape"):
        many(sample_shape=(0,))
    with pytest.raises(ValueError, match="grid"):
        many(grid="nope", out=tmp_path / "never")
    assert not (tmp_path / "never").exists()  # refused before any file is written
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        many(out=tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="manifest"):
        sd.load_samples(tmp_path / "nothing")


def test_progress_bar_covers_the_job(capsys: pytest.CaptureFixture) -> None:
    many(progress=True)
    err = capsys.readouterr().err
    assert "sample_many" in err and "20/20" in err


# ------------------------------------------------------------------------------------------ likelihood
LIK = {"solver": "rk4", "steps": 4, "divergence": "hutchinson", "n_probes": 2}


def test_likelihood_per_example_seeding_and_resume(tmp_path: Path) -> None:
    data = many(n=11).x.double()
    res = sd.log_likelihood_many(model(), data, batch_size=4, seed=3, progress=False, **LIK)
    assert res.logp.shape == (11,) and res.logp.dtype == torch.float64
    for i in (0, 5, 10):  # example i is log_likelihood's result with the streams of (seed, i)
        streams = index_streams(3, i, i + 1, tuple(data.shape[1:]))
        one = sd.log_likelihood(model(), data[i:i + 1], generator=streams, **LIK)
        assert torch.equal(one.logp.double(), res.logp[i:i + 1]) and torch.equal(one.bpd.double(), res.bpd[i:i + 1])
    assert res.mean_logp == float(res.logp.sum()) / 11
    other = sd.log_likelihood_many(model(), data, batch_size=4, seed=4, progress=False, **LIK)
    assert not torch.equal(other.logp, res.logp)  # the probes do depend on the seed
    first = sd.log_likelihood_many(model(), data, batch_size=4, seed=3, out=tmp_path, progress=False, **LIK)
    again = sd.log_likelihood_many(model(), data, batch_size=4, seed=3, out=tmp_path, progress=False, **LIK)
    assert first.stats.computed == 3 and again.stats.resumed == 3 and again.stats.nfe == 0
    assert torch.equal(again.logp, res.logp) and torch.equal(first.bpd, res.bpd)
    with pytest.raises(ValueError, match=r"different configuration.*data"):  # other data, same shape
        sd.log_likelihood_many(model(), data + 1, batch_size=4, seed=3, out=tmp_path, progress=False, **LIK)


def test_likelihood_bad_input() -> None:
    data = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="seed=<int>"):
        sd.log_likelihood_many(model(), data, batch_size=2, generator=0)
    with pytest.raises(TypeError, match=r"unknown option.*'stepz'"):
        sd.log_likelihood_many(model(), data, batch_size=2, stepz=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        sd.log_likelihood_many(model(), data, batch_size=0)
    with pytest.raises(ValueError, match="divergence"):
        sd.log_likelihood_many(model(), data, batch_size=2, divergence="nope")
    with pytest.raises(TypeError, match="Dataset"):
        sd.log_likelihood_many(model(), 3.0, batch_size=2)
    with pytest.raises(TypeError, match=r"data\[0\] must be a tensor"):
        sd.log_likelihood_many(model(), [1, 2], batch_size=2)
    empty = sd.log_likelihood_many(model(), torch.zeros(0, 2), batch_size=2, progress=False)
    assert empty.logp.shape == (0,) and np.isnan(empty.mean_logp)
