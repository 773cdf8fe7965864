"""`python -m weshare.bench` on a tiny tree: it syncs, checks the reader's copy, and reports
the ratio, the insertion's upload and the floor of the large file's unavoidable work."""

from __future__ import annotations

from pathlib import Path

from weshare.bench import _floor_s, run


async def test_the_bench_reports_its_measures(tmp_path: Path) -> None:
    result = await run(tmp_path, small_files=5, small_size=100, big_mib=3, seed=1, repeat=3)
    for measure in ("small_files", "big_file"):  # the copy first, then the sync, then the copy
        assert [run["copy_first"] for run in result[measure]["runs"]] == [True, False, True]
        ratios = [run["ratio"] for run in result[measure]["runs"]]
        assert result[measure]["median_ratio_copy_first"] == (ratios[0] + ratios[2]) / 2
        assert result[measure]["median_ratio_sync_first"] == ratios[1]
    big = result["big_file"]["runs"][0]
    assert big["bytes"] == 3 * 1024 * 1024
    assert big["ratio"] > 0
    assert big["uploaded"] > big["bytes"]  # every part, encrypted
    assert big["floor_s"] > 0
    assert result["big_file"]["median_floor_s"] > 0
    assert "floor_s" not in result["small_files"]["runs"][0]
    assert 0 < result["insertion"]["uploaded_fraction"] < 0.5  # 1-3 parts of ~6


def test_the_floor_is_the_cpu_time_of_cutting_hashing_and_encrypting() -> None:
    small, large = bytes(256 * 1024), bytes(8 * 1024 * 1024)
    assert 0 < _floor_s(small) < _floor_s(large)
