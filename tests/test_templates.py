"""Target templates are rendered for every chunk at plan time."""

from __future__ import annotations

import pytest

from distetl import Chunk, ChunkList, DateRange, PlanError
from distetl.model.targets import Targets
from distetl.model.templates import TargetTemplate


def test_render_uses_chunk_fields_and_output():
    template = TargetTemplate("{output}/sales/date={date}/part-{chunk:03d}.parquet")
    chunk = Chunk(key="date=2024-01-03", fields={"date": "2024-01-03"}, index=7)
    assert template.render(chunk, "s3://b/p") == "s3://b/p/sales/date=2024-01-03/part-007.parquet"


def test_unknown_field_names_the_field_the_chunk_and_the_fix():
    template = TargetTemplate("{output}/t/day={day_of_year}/part-0.parquet")
    chunks = DateRange(start="2013-01-01", end="2013-01-02").chunks()
    with pytest.raises(PlanError) as err:
        template.render_all(chunks, "/out")
    text = str(err.value)
    assert "{day_of_year}" in text and "date=2013-01-01" in text
    assert "date" in text and "Fix: write {year} (the nearest of those fields) in place of {day_of_year}" in text
    with pytest.raises(PlanError) as err:
        TargetTemplate("{output}/t/{zzz}.parquet").render_all(chunks, "/out")
    assert "Fix: use one of those fields in place of {zzz}, or add 'zzz'" in str(err.value)
    with pytest.raises(PlanError) as err:
        TargetTemplate("{output}/t/date={dat}.parquet").render_all(chunks, "/out")
    assert "Fix: write {date} (the nearest" in str(err.value)


@pytest.mark.parametrize("value", ["a/b", "..", "", "x\\y"])
def test_unsafe_values_are_rejected(value):
    chunks = ChunkList(items=[value], key_field="region").chunks()
    with pytest.raises(PlanError, match="safe in one path segment"):
        TargetTemplate("{output}/r={region}/part-0.parquet").render_all(chunks, "/out")


def test_duplicate_targets_are_rejected():
    chunks = DateRange(start="2013-01-01", end="2013-01-02").chunks()
    with pytest.raises(PlanError, match="both rendering"):
        TargetTemplate("{output}/year={year}/part-0.parquet").render_all(chunks, "/out")


def test_bad_template_syntax():
    with pytest.raises(PlanError, match="balance the braces"):
        TargetTemplate("{output}/{date")


def test_committed_found_with_one_listing(tmp_path):
    targets = Targets("{output}/t/date={date}/part-0.parquet", str(tmp_path))
    chunks = DateRange(start="2013-01-01", end="2013-01-03").chunks()
    paths = targets.render(chunks)
    assert targets.listing_root() == str(tmp_path / "t")
    (tmp_path / "t" / "date=2013-01-02").mkdir(parents=True)
    (tmp_path / "t" / "date=2013-01-02" / "part-0.parquet").write_bytes(b"x")
    (tmp_path / "t" / "date=2013-01-03").mkdir()
    (tmp_path / "t" / "date=2013-01-03" / ".part-0.parquet.abc.tmp").write_bytes(b"partial")
    assert targets.committed(paths) == {paths[1]}
