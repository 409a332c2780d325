"""logstore: writing, resuming and reading a run's metrics.zarr, and its clear errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from dask.callbacks import Callback

from logstore import (
    ATTRIBUTES,
    RunWriter,
    StoreError,
    list_runs,
    open_run,
    open_runs,
    population_curves,
)
from logstore.runs import find_runs

N = 600  # individuals: 400 train, 150 heldout, 50 finetune
DENSE = 128  # evaluated at every step (the first chunk); the others at every third step
LAYERS, HEADS = 2, 3
CHUNKS = dict(chunk_steps=4, chunk_individuals=128)


def population():
    split = np.array(["train"] * 400 + ["heldout"] * 150 + ["finetune"] * 50)
    rank = np.where(split == "train", np.arange(N), -1)
    return np.arange(N) * 7 + 3, split, rank


def evaluation(step: int, full: bool | None = None) -> dict:
    """Deterministic metrics of one evaluation (the same function of ``step`` everywhere)."""
    i = np.arange(N)[:, None]
    a = np.arange(6)[None, :]
    loss = ((step * 7 + i * 13 + a * 31) % 1000 / 100).astype(np.float32)
    if not (full if full is not None else step % 30 == 0):
        loss[DENSE:] = np.nan
    return dict(
        loss=loss,
        correct=loss < 3,
        top_prob=np.full_like(loss, 0.5),  # given even where not evaluated: the store masks it
        entropy=(np.arange(N * 6).reshape(N, 6) % 5).astype(np.float32),
        exposures=((step + np.arange(N)) % 50).astype(np.int32),
        attn_name_to_name=np.full((LAYERS, HEADS), step, np.float32),
        attn_value_to_name=np.full((LAYERS, HEADS), -step, np.float32),
        attn_sharpness=np.arange(LAYERS * HEADS, dtype=np.float32).reshape(LAYERS, HEADS) + step,
    )


def create(path: Path, **kwargs) -> RunWriter:
    individual, split, rank = population()
    config = {"seed": 3, "world": {"n_individuals": 400}, "sampling": {"kind": "power_law", "alpha": 1.5},
              "train": {"lr": 0.01}}
    return RunWriter.create(
        path,
        individual=individual,
        split=split,
        rank=rank,
        baseline=np.log(np.arange(2, 8)),
        n_layers=LAYERS,
        n_heads=HEADS,
        config=kwargs.pop("config", config),
        package_version="0.1.0",
        fsync=False,
        **{**CHUNKS, **kwargs},
    )


def append(w: RunWriter, steps, full: bool | None = None) -> None:
    for step in steps:
        w.append_eval(step, **evaluation(step, full))
        w.append_train(np.arange(step - 9, step + 1), np.full(10, step / 10), np.full(10, 1e-3))


def write_run(path: Path, steps=range(10, 101, 10), status="complete", **kwargs) -> Path:
    w = create(path, **kwargs)
    append(w, steps)
    w.close(status)
    return path


def expected(steps, name: str, full: bool | None = None) -> np.ndarray:
    return np.stack([evaluation(s, full)[name] for s in steps])


# ------------------------------------------------------------------ writing and reading


def test_round_trip_shows_the_schema_and_every_value(tmp_path):
    steps = list(range(10, 101, 10))
    store = write_run(tmp_path / "run" / "metrics.zarr", steps)
    ds = open_run(tmp_path / "run")  # a run directory or its store, both work
    assert dict(ds.sizes) == {"step": 10, "individual": N, "attribute": 6, "train_step": 100, "layer": LAYERS, "head": HEADS}
    assert ds.attrs["schema_version"] == 1 and ds.attrs["status"] == "complete"
    assert ds.attrs["committed_steps"] == 10 and ds.attrs["package_version"] == "0.1.0"
    assert json.loads(ds.attrs["config"])["sampling"]["alpha"] == 1.5
    individual, split, rank = population()
    np.testing.assert_array_equal(ds.step, steps)
    np.testing.assert_array_equal(ds.individual, individual)
    assert list(ds.split.values) == list(split) and list(ds.attribute.values) == list(ATTRIBUTES)
    np.testing.assert_array_equal(ds["rank"], rank)
    np.testing.assert_array_equal(ds.train_step, np.arange(1, 101))
    np.testing.assert_array_equal(ds.train_loss, np.repeat(np.arange(1, 11), 10).astype(np.float32))
    np.testing.assert_allclose(ds.baseline, np.log(np.arange(2, 8)))
    loss = expected(steps, "loss")
    np.testing.assert_array_equal(ds.loss.values, loss)
    np.testing.assert_array_equal(ds.exposures.values, expected(steps, "exposures"))
    np.testing.assert_array_equal(ds.attn_sharpness.values, expected(steps, "attn_sharpness"))
    assert ds.loss.dtype == np.float32 and ds.exposures.dtype == np.int32 and ds.attn_name_to_name.dims == ("step", "layer", "head")
    assert zarr.open_array(store / "correct", mode="r").dtype == np.bool_  # bool on disk, as the schema says


@pytest.mark.parametrize(
    "selection",
    [
        dict(step=3),
        dict(individual=5, attribute=2),
        dict(step=slice(2, 11, 3), attribute=slice(None, None, -2)),
        dict(individual=[599, 3, 130, 131]),
        dict(step=[0, 11], individual=slice(100, 300, 7)),
    ],
)
def test_reads_agree_with_zarr_for_any_selection(tmp_path, selection):
    path = write_run(tmp_path / "metrics.zarr", range(10, 121, 10))
    ds = open_run(path)
    for name in ("loss", "exposures"):
        stored = xr.DataArray(zarr.open_array(path / name, mode="r")[:12], dims=ds[name].dims)  # zarr's own reading
        selection = {dim: sel for dim, sel in selection.items() if dim in stored.dims}
        np.testing.assert_array_equal(ds[name].isel(selection).values, stored.isel(selection).values)


def test_correct_top_prob_entropy_are_masked_where_loss_is_missing(tmp_path):
    steps = [10, 20, 30]
    ds = open_run(write_run(tmp_path / "metrics.zarr", steps))
    loss = expected(steps, "loss")
    missing = np.isnan(loss)
    assert missing.any() and (~missing).any()
    for name in ("correct", "top_prob", "entropy"):
        assert np.isnan(ds[name].values[missing]).all(), name
    np.testing.assert_array_equal(ds.correct.values[~missing], (loss < 3)[~missing])
    # the accuracy over evaluated facts, not over everyone
    accuracy = np.nanmean(np.where(missing, np.nan, loss < 3), axis=1)
    np.testing.assert_allclose(ds.correct.mean("individual").values, accuracy, rtol=1e-6)


def test_facts_never_evaluated_cost_no_chunk_files(tmp_path):
    store = write_run(tmp_path / "metrics.zarr", [10, 20, 40, 50])  # no step evaluates everyone
    for name in ("loss", "correct", "top_prob", "entropy"):
        chunks = sorted(p.name for p in (store / name).glob("c.*"))
        assert chunks == ["c.0.0.0"], (name, chunks)  # the dense individuals' chunk only


def test_rows_past_committed_steps_are_invisible(tmp_path):
    w = create(tmp_path / "metrics.zarr")
    append(w, [10, 20, 30])
    w.flush()
    assert w.last_step == 30
    group = zarr.open_group(tmp_path / "metrics.zarr", mode="r+", use_consolidated=False)
    group.attrs["committed_steps"] = 2  # as if the last row were still being written
    ds = open_run(tmp_path / "metrics.zarr")
    np.testing.assert_array_equal(ds.step, [10, 20])
    np.testing.assert_array_equal(ds.loss.values, expected([10, 20], "loss"))
    w.close()


def test_append_rejects_repeated_steps_and_wrong_shapes(tmp_path):
    with create(tmp_path / "metrics.zarr") as w:
        append(w, [10])
        with pytest.raises(ValueError, match="not after"):
            w.append_eval(10, **evaluation(10))
        with pytest.raises(ValueError, match="loss must have shape"):
            w.append_eval(20, **{**evaluation(20), "loss": np.zeros((N, 5))})
        with pytest.raises(ValueError, match="train steps must increase"):
            w.append_train([5], [1.0], [1.0])
    with pytest.raises(StoreError, match="already exists") as refused:
        create(tmp_path / "metrics.zarr")
    assert f"phasefit train {tmp_path / 'config.toml'} --out {tmp_path} --resume" in str(refused.value)
    assert "RunWriter" not in str(refused.value)  # what a user runs, not an internal API


# ------------------------------------------------------------------ resuming and failing


def test_resume_continues_after_the_last_committed_row(tmp_path):
    path = write_run(tmp_path / "metrics.zarr", range(10, 61, 10), status="failed")
    w = RunWriter.resume(path, fsync=False)
    assert w.last_step == 60
    assert open_run(path).attrs["status"] == "running"
    with pytest.raises(ValueError, match="not after"):
        w.append_eval(60, **evaluation(60))
    append(w, range(70, 121, 10))
    w.close()
    ds = open_run(path)
    np.testing.assert_array_equal(ds.step, np.arange(10, 121, 10))
    np.testing.assert_array_equal(ds.train_step, np.arange(1, 121))
    np.testing.assert_array_equal(ds.loss.values, expected(range(10, 121, 10), "loss"))
    assert ds.attrs["status"] == "complete" and "reason" not in ds.attrs


def test_resume_after_step_drops_later_rows_and_their_stale_chunks(tmp_path):
    path = tmp_path / "metrics.zarr"
    w = create(path)
    append(w, range(10, 91, 10), full=True)  # everyone evaluated: every chunk written
    w.close("failed", reason="preempted")
    w = RunWriter.resume(path, after_step=45, fsync=False)  # a checkpoint between evaluations
    assert w.last_step == 40
    w.close("failed")
    np.testing.assert_array_equal(open_run(path).train_step, np.arange(1, 46))
    w = RunWriter.resume(path, after_step=40, fsync=False)
    append(w, range(50, 91, 10), full=False)  # now only the dense individuals
    w.close()
    ds = open_run(path)
    np.testing.assert_array_equal(ds.step, np.arange(10, 91, 10))
    np.testing.assert_array_equal(ds.train_step, np.arange(1, 91))
    loss = ds.loss.values
    np.testing.assert_array_equal(loss[:4], expected(range(10, 41, 10), "loss", full=True))
    np.testing.assert_array_equal(loss[4:], expected(range(50, 91, 10), "loss", full=False))  # no stale facts
    np.testing.assert_array_equal(ds.exposures.values[4:], expected(range(50, 91, 10), "exposures"))


def test_a_background_write_error_surfaces_on_the_next_call(tmp_path):
    path = tmp_path / "metrics.zarr"
    w = create(path)
    append(w, [10])
    w.flush()
    shutil.rmtree(path / "loss")
    (path / "loss").write_text("not a directory")  # every write into loss/ now fails
    append(w, [20])
    with pytest.raises(StoreError, match="background"):
        w.flush()
    with pytest.raises(StoreError):
        w.close()
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]
    assert attrs["status"] == "failed" and "background" in attrs["reason"]
    assert attrs["committed_steps"] == 1  # the failed row was never committed


def test_an_exception_inside_the_writer_marks_the_run_failed(tmp_path):
    path = tmp_path / "metrics.zarr"
    with pytest.raises(RuntimeError, match="diverged"):
        with create(path) as w:
            append(w, [10, 20])
            raise RuntimeError("loss diverged")
    ds = open_run(path)
    assert ds.attrs["status"] == "failed" and "diverged" in ds.attrs["reason"]
    np.testing.assert_array_equal(ds.step, [10, 20])  # what was appended before is kept


def test_one_writer_per_run(tmp_path):
    path = tmp_path / "metrics.zarr"
    w = create(path)
    with pytest.raises(StoreError, match="another process is writing"):
        RunWriter.resume(path)
    w.close()
    RunWriter.resume(path, fsync=False).close()


# ------------------------------------------------------------------ errors of bad stores


def test_a_path_that_is_not_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    zarr.open_group(tmp_path / "other.zarr", mode="w")  # a Zarr group, but not ours
    cases = {"missing": "no such directory", "file.txt": "not a directory", "empty": "no zarr.json", "other.zarr": "schema_version"}
    for path, reason in cases.items():
        with pytest.raises(StoreError, match=reason) as err:
            open_run(tmp_path / path)
        assert str(tmp_path / path) in str(err.value)


def test_chance_accuracy_round_trips_and_stores_written_before_it_still_open_and_resume(tmp_path):
    chance = 1 / np.arange(2, 8)
    ds = open_run(write_run(tmp_path / "new" / "metrics.zarr", [10], chance_accuracy=chance))
    np.testing.assert_array_equal(ds.chance_accuracy.values, chance)
    assert ds.chance_accuracy.dims == ("attribute",) and "chance" in ds.chance_accuracy.attrs["long_name"]
    assert np.isnan(open_run(write_run(tmp_path / "unknown" / "metrics.zarr", [10])).chance_accuracy.values).all()
    with pytest.raises(ValueError, match="one value per attribute"):
        create(tmp_path / "bad" / "metrics.zarr", chance_accuracy=[0.5])

    # A store as written before the variable existed: no array, no metadata, no checksums of it.
    old = write_run(tmp_path / "old" / "metrics.zarr", [10, 20], status="failed", chance_accuracy=chance)
    shutil.rmtree(old / "chance_accuracy")
    doc = json.loads((old / "zarr.json").read_text())
    del doc["consolidated_metadata"]["metadata"]["chance_accuracy"]
    del doc["attributes"]["chunk_checksums"]["chance_accuracy"]
    (old / "zarr.json").write_text(json.dumps(doc))
    assert "chance_accuracy" not in open_run(old)
    w = RunWriter.resume(old, fsync=False)
    append(w, [30])
    w.close()
    ds = open_run(old)
    assert "chance_accuracy" not in ds and list(ds.step.values) == [10, 20, 30]
    np.testing.assert_array_equal(ds.loss.values, expected([10, 20, 30], "loss"))


def test_a_missing_variable_is_named(tmp_path):
    path = write_run(tmp_path / "metrics.zarr", [10, 20])
    shutil.rmtree(path / "entropy")
    with pytest.raises(StoreError, match="array 'entropy' is missing") as err:
        open_run(path)
    assert str(path) in str(err.value)


def test_an_unknown_schema_version_is_refused(tmp_path):
    path = write_run(tmp_path / "metrics.zarr", [10])
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="unknown schema_version 99"):
        open_run(path)
    with pytest.raises(StoreError, match="unknown schema_version 99"):
        RunWriter.resume(path)


@pytest.mark.parametrize("edit, reason", [
    (lambda a, m: a.update(committed_steps=None), "attribute 'committed_steps' is None, not a count of rows"),
    (lambda a, m: a.update(committed_steps=-5), "attribute 'committed_steps' is -5, not a count of rows"),
    (lambda a, m: a.update(committed_train_steps="abc"), "attribute 'committed_train_steps' is 'abc'"),
    (lambda a, m: a.update(status="exploded"), "attribute 'status' is 'exploded', not one of running, complete, failed"),
    (lambda a, m: m["step"].update(shape="abc"), "array 'step' has an unusable shape 'abc'"),
    (lambda a, m: m["loss"]["chunk_grid"]["configuration"].update(chunk_shape=[0, 128, 6]),
     "array 'loss' has an unusable chunk shape [0, 128, 6]"),
])
def test_store_metadata_of_the_wrong_kind_is_named(tmp_path, edit, reason):
    """Hand-edited or damaged metadata is a StoreError naming what is wrong, so ``list_runs``
    (and ``phasefit ls``, ``detect``) list the run as unreadable and go on with the others."""
    path = write_run(tmp_path / "bad" / "metrics.zarr", [10, 20])
    write_run(tmp_path / "good" / "metrics.zarr", [10, 20])
    doc = json.loads((path / "zarr.json").read_text())
    edit(doc["attributes"], doc["consolidated_metadata"]["metadata"])
    (path / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError) as err:
        open_run(path)
    assert str(err.value).startswith(f"{path}: {reason}")
    table = list_runs(tmp_path).set_index("run")
    assert table.loc["bad", "status"] == "unreadable" and reason in table.loc["bad", "problem"]
    assert table.loc["good", "status"] == "complete"


@pytest.mark.parametrize("name", ["step", "individual", "split", "train_step"])
def test_a_lost_coordinate_chunk_is_an_error_not_fill_values(tmp_path, name):
    """Coordinates are never sparse: a lost chunk (read as -1 or "") is named, where it would
    otherwise pass for a step -1, an individual -1 or a fact of no split."""
    path = write_run(tmp_path / "run" / "metrics.zarr", [10, 20])
    for chunk in (path / name).rglob("c*"):
        if chunk.is_file():
            chunk.unlink()
    with pytest.raises(StoreError, match=f"{path}: array '{name}' .*a missing or damaged chunk"):
        open_run(path)
    if name == "step":
        assert "a missing or damaged chunk" in list_runs(tmp_path).set_index("run").loc["run", "problem"]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_damaged_chunk_is_an_error_naming_run_and_array(tmp_path, damage):
    path = write_run(tmp_path / "metrics.zarr", range(10, 81, 10))
    chunk = path / "top_prob" / "c.1.0.0"
    data = bytearray(chunk.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds = open_run(path)  # lazy: opening works, and the other arrays still read
    assert ds.loss.values.shape == (8, N, 6)
    with pytest.raises(StoreError, match="array 'top_prob'") as err:
        ds.top_prob.load()
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ many runs


def make_runs(top: Path) -> None:
    for k, alpha in enumerate([0.0, 1.0]):
        config = {"seed": k, "world": {"n_individuals": 400}, "sampling": {"kind": "power_law", "alpha": alpha},
                  "train": {"lr": 0.01}}
        write_run(top / f"alpha{alpha}" / "metrics.zarr", [10, 20, 30 + k * 10], config=config)
    w = create(top / "sweep" / "live" / "metrics.zarr")  # nested, and still running
    append(w, [10])
    w.flush()
    (top / "broken" / "metrics.zarr").mkdir(parents=True)
    (top / "broken" / "metrics.zarr" / "zarr.json").write_text("{not json")
    (top / "report").mkdir()  # not a run: ignored
    return w


def test_open_runs_gives_one_node_per_run_and_skips_broken_ones(tmp_path):
    w = make_runs(tmp_path)
    with pytest.warns(UserWarning, match="skipping run broken"):
        tree = open_runs(tmp_path)
    w.close()
    assert sorted(tree.children) == ["alpha0.0", "alpha1.0", "sweep"]
    node = tree["alpha1.0"]
    assert node.attrs["sampling.alpha"] == 1.0 and node.attrs["seed"] == 1 and node.attrs["status"] == "complete"
    np.testing.assert_array_equal(node.ds.step, [10, 20, 40])
    assert tree["sweep/live"].attrs["status"] == "running"
    assert tree["alpha0.0"].ds.loss.chunks is not None  # lazy


def test_list_runs_table(tmp_path):
    w = make_runs(tmp_path)
    table = list_runs(tmp_path).set_index("run")
    w.close()
    assert list(table.index) == ["alpha0.0", "alpha1.0", "broken", "sweep/live"]
    assert table.loc["alpha1.0", "status"] == "complete" and table.loc["alpha1.0", "steps"] == 3
    assert table.loc["alpha1.0", "last_step"] == 40 and table.loc["alpha1.0", "sampling.alpha"] == 1.0
    assert table.loc["sweep/live", "status"] == "running" and table.loc["sweep/live", "steps"] == 1
    assert table.loc["broken", "status"] == "unreadable" and "zarr.json" in table.loc["broken", "problem"]
    assert {"seed", "world.n_individuals", "sampling.kind"} <= set(table.columns)
    assert "train.lr" not in table.columns  # the same in every run that could be read


def test_runs_behind_symbolic_links_are_found_once(tmp_path):
    """A folder of links to runs of several sweeps is a comparison; a link that loops back is
    walked once."""
    w = make_runs(tmp_path / "sweeps")
    w.close()
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "flat").symlink_to(tmp_path / "sweeps" / "alpha1.0")
    (compare / "uniform").symlink_to(tmp_path / "sweeps" / "alpha0.0")
    (compare / "again").symlink_to(tmp_path / "sweeps" / "alpha0.0")  # the same run twice: listed once, by the first name
    (compare / "loop").symlink_to(compare)
    assert sorted(find_runs(compare)) == ["again", "flat"]
    assert list_runs(compare).set_index("run").loc["flat", "last_step"] == 40


# ------------------------------------------------------------------ population curves


class _LargestResult(Callback):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, id):
        self.largest = max(self.largest, getattr(result, "nbytes", 0))


def test_population_curves_are_means_over_evaluated_facts_computed_chunk_by_chunk(tmp_path):
    steps = list(range(10, 121, 10))
    ds = open_run(write_run(tmp_path / "metrics.zarr", steps))
    with dask.config.set(scheduler="threads"), _LargestResult() as largest:
        curves = population_curves(ds)
    assert largest.largest < ds.loss.nbytes / 4  # never the whole array in one task
    assert curves.loss.dims == ("step", "split", "attribute")
    assert list(curves.split.values) == ["train", "heldout", "finetune"]
    loss = expected(steps, "loss")
    _, split, _ = population()
    for s in ("train", "heldout", "finetune"):
        facts = loss[:, split == s]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices where none evaluated
            mean = np.nanmean(facts, axis=1)
            accuracy = np.nanmean(np.where(np.isnan(facts), np.nan, facts < 3), axis=1)
        np.testing.assert_allclose(curves.loss.sel(split=s).values, mean, rtol=1e-6)
        np.testing.assert_allclose(curves.accuracy.sel(split=s).values, accuracy, rtol=1e-6)
        np.testing.assert_array_equal(curves["count"].sel(split=s).values, (~np.isnan(facts)).sum(axis=1))
    assert np.isnan(curves.loss.sel(split="finetune", step=10)).all()  # no finetune fact evaluated then
