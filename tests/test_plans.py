"""Plans split work into chunks; bad parameters fail at plan time with the fix."""

from __future__ import annotations

import pytest

from distetl import ChunkList, ConfigError, DateRange, FileList, IdRange, PlanError


def test_date_range_by_day_is_inclusive_with_date_fields():
    chunks = DateRange(start="2013-12-30", end="2014-01-02").chunks()
    assert [c.key for c in chunks] == [
        "date=2013-12-30", "date=2013-12-31", "date=2014-01-01", "date=2014-01-02"]
    assert chunks[2]["date"] == "2014-01-01" and chunks[2].year == "2014" and chunks[2]["month"] == "2014-01"
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_date_range_by_month_clips_to_the_range():
    chunks = DateRange(start="2013-01-15", end="2013-03-10", freq="month").chunks()
    assert [c.key for c in chunks] == ["month=2013-01", "month=2013-02", "month=2013-03"]
    assert (chunks[0]["start"], chunks[0]["end"]) == ("2013-01-15", "2013-01-31")
    assert chunks[1]["end"] == "2013-02-28"
    assert chunks[2]["end"] == "2013-03-10"


def test_bad_date_range_names_both_dates_and_the_fix():
    with pytest.raises(PlanError) as err:
        DateRange(start="2013-02-01", end="2013-01-01").chunks()
    text = str(err.value)
    assert "Expected --start on or before --end" in text
    assert "2013-02-01" in text and "2013-01-01" in text and "Fix:" in text


def test_malformed_date_says_the_expected_format():
    with pytest.raises(PlanError, match=r"ISO date .*'2013-13-01'"):
        DateRange(start="2013-13-01", end="2013-12-31").chunks()


def test_unknown_freq_is_rejected():
    with pytest.raises(PlanError, match="freq"):
        DateRange(start="2013-01-01", end="2013-01-02", freq="fortnight").chunks()


def test_with_params_converts_and_rejects_unknown_names():
    plan = IdRange(start=0, stop=10, size=3).with_params(stop="25", size="10")
    assert [c.key for c in plan.chunks()] == ["ids=00-09", "ids=10-19", "ids=20-24"]
    with pytest.raises(ConfigError, match="--sise"):
        IdRange(start=0, stop=10).with_params(sise="3")
    with pytest.raises(ConfigError, match="integer for --size"):
        IdRange(start=0, stop=10).with_params(size="ten")


def test_id_range_bounds():
    chunks = IdRange(start=5, stop=12, size=4).chunks()
    assert [(c["start"], c["stop"]) for c in chunks] == [(5, 9), (9, 12)]
    with pytest.raises(PlanError, match="--start below --stop"):
        IdRange(start=5, stop=5).chunks()


def test_chunk_list_of_scalars_and_dicts():
    assert [c.key for c in ChunkList(items=["eu", "us"], key_field="region").chunks()] == [
        "region=eu", "region=us"]
    chunks = ChunkList(items=[{"region": "eu", "n": 1}], key_field="region").chunks()
    assert chunks[0]["n"] == 1
    with pytest.raises(PlanError, match="unique chunk keys"):
        ChunkList(items=["a", "a"]).chunks()


def test_file_list_globs_local_files(tmp_path):
    for name in ("b.csv", "a.csv", "skip.txt"):
        (tmp_path / name).write_text("x\n1\n")
    chunks = FileList(pattern=str(tmp_path / "*.csv")).chunks()
    assert [c.key for c in chunks] == ["file=a.csv", "file=b.csv"]
    assert chunks[0]["stem"] == "a" and chunks[0]["path"].endswith("/a.csv")
    with pytest.raises(PlanError, match="at least one file matching"):
        FileList(pattern=str(tmp_path / "*.parquet")).chunks()


def _fsspec_glob(pattern: str) -> dict[str, str]:
    """What fsspec's own glob lists, with distetl's stamps: the reference for the fast path."""
    import fsspec

    from distetl.storage import stamp_of

    found = fsspec.filesystem("file").glob(pattern, detail=True)
    return {p: stamp_of(info) for p, info in found.items() if info.get("type") != "directory"}


def test_local_glob_lists_what_fsspec_lists_with_the_same_stamps(tmp_path, monkeypatch):
    import os

    from distetl.storage import Storage, _scandir_glob

    (tmp_path / "sub").mkdir()
    (tmp_path / "dir.csv").mkdir()  # a folder whose name matches: never a chunk
    for name in ("a.csv", ".hidden.csv", "b[1].csv", "C.CSV", "c.csv", "x.txt", "sub/d.csv"):
        (tmp_path / name).write_text("x\n1\n" * len(name))
    os.symlink(tmp_path / "a.csv", tmp_path / "link.csv")
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    storage = Storage.for_url(str(tmp_path))
    patterns = ["*.csv", "*", "?.csv", "[ab]*.csv", "[!a]*.csv", "b[[]1].csv", "*.CSV", "sub/*.csv", "*/d.csv",
                "nothere/*.csv"]
    for pattern in patterns:
        full = str(tmp_path / pattern)
        expected = _fsspec_glob(full)
        table = storage.glob_table(full)
        got = dict(zip(table.column("path").to_pylist(), table.column("stamp").to_pylist()))
        assert got == expected, pattern
        assert table.column("path").to_pylist() == sorted(expected), pattern
    # The fast path took the one-folder patterns (the others went through fsspec's glob).
    assert _scandir_glob(storage.fs, str(tmp_path / "*.csv")) is not None
    assert _scandir_glob(storage.fs, str(tmp_path / "*/d.csv")) is None
    # A relative pattern lists absolute paths, as before.
    monkeypatch.chdir(tmp_path)
    chunks = FileList(pattern="*.csv").chunks()
    assert [c["path"] for c in chunks] == sorted(p for p in _fsspec_glob(str(tmp_path / "*.csv")))


def test_file_chunks_are_columns_that_behave_like_the_list_of_chunks(tmp_path):
    import pickle

    from distetl import Chunk
    from distetl.model.chunkseq import FileChunks

    for i in range(30):
        (tmp_path / f"f{i:02d}.tar.gz").write_text("x" * i)
    chunks = FileList(pattern=str(tmp_path / "*.gz")).chunks()
    assert isinstance(chunks, FileChunks) and chunks.fingerprinted
    expected = [
        Chunk(key=f"file=f{i:02d}.tar.gz", index=i,
              fields={"path": str(tmp_path / f"f{i:02d}.tar.gz"), "name": f"f{i:02d}.tar.gz", "stem": f"f{i:02d}.tar",
                      "fingerprint": f"{i}:{(tmp_path / f'f{i:02d}.tar.gz').stat().st_mtime}"})
        for i in range(30)
    ]
    assert chunks == expected and list(chunks) == expected and chunks[7] == expected[7] and chunks[-1] == expected[-1]
    assert chunks[3:5] == expected[3:5]
    assert chunks.find("file=f12.tar.gz") == 12 and chunks.find("file=nope.csv") is None
    assert chunks.find("ids=1-2") is None
    again = pickle.loads(pickle.dumps(chunks))
    assert again == expected and again.find("file=f29.tar.gz") == 29
    explicit = FileList(paths=[str(tmp_path / "f01.tar.gz"), str(tmp_path / "f00.tar.gz")]).chunks()
    assert not explicit.fingerprinted
    assert [c.key for c in explicit] == ["file=f00.tar.gz", "file=f01.tar.gz"]
    assert "fingerprint" not in explicit[0].fields


def test_file_names_repeated_across_folders_are_a_plan_error_naming_both_paths(tmp_path):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.csv").write_text("x\n1\n")
        (tmp_path / folder / f"own-{folder}.csv").write_text("x\n1\n")
    with pytest.raises(PlanError) as caught:
        FileList(pattern=str(tmp_path / "*" / "*.csv")).chunks()
    message = str(caught.value)
    assert "file names unique across the plan" in message
    assert f"'same.csv' at '{tmp_path / 'a' / 'same.csv'}' and '{tmp_path / 'b' / 'same.csv'}'" in message
    with pytest.raises(PlanError, match="file names unique"):
        FileList(paths=[str(tmp_path / "c" / "same.csv"), str(tmp_path / "a" / "same.csv")]).chunks()
    ok = FileList(pattern=str(tmp_path / "*" / "own-*.csv")).chunks()
    assert [c.key for c in ok] == ["file=own-a.csv", "file=own-b.csv", "file=own-c.csv"]
