"""Tests of scenario 10 (the cost of reading before writing): its figures from a call count."""

from __future__ import annotations

import pytest

from bench.lookups import SEARCH_PATH, TARGET_SHARE, calls_per_1000, read_share

UPDATE = "/v1/mgmt/user/update/phone"
LICENSE = "/v1/mgmt/license"


def test_calls_per_1000_counts_every_kind_of_call() -> None:
    paths = {LICENSE: 1, SEARCH_PATH: 11, UPDATE: 1000}
    assert calls_per_1000(paths, 1000) == 1012
    assert calls_per_1000(paths, 2000) == 506


def test_read_share_of_an_all_changed_file() -> None:
    # 10 reads of 100 login ids and 1 phone check for 1,000 changes, the license, the updates
    share = read_share({LICENSE: 1, SEARCH_PATH: 11, UPDATE: 1000})
    assert share == pytest.approx(11 / 1012) and share <= TARGET_SHARE
    # a read per row would be far over the target
    assert read_share({SEARCH_PATH: 1000, UPDATE: 1000}) == 0.5
    assert read_share({}) == 0.0
