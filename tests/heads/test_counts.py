"""Parameter counts against the official efficient-probing code (research/probe_heads_official.md §1).

vizoo leaves out parameters whose gradient is zero for every input in the official modules; each such
difference is listed here as a function of D and documented in the head's docstring.
"""
import pytest

from vizoo.heads import create_head, list_heads

C = 1000
# name -> ({D: official total}, dead parameters left out by vizoo as a function of D)
OFFICIAL = {
    "linear": ({768: 769_000, 384: 385_000, 1024: 1_025_000}, lambda d: 0),
    "ep": ({768: 1_383_400, 384: 544_744, 1024: 2_106_344}, lambda d: 0),
    "mhca": ({768: 1_949_416, 384: 680_296, 1024: 3_123_176}, lambda d: 0),
}
CASES = [(name, d) for name, (totals, _) in OFFICIAL.items() for d in totals]


def test_every_registered_head_has_an_official_count():
    assert set(OFFICIAL) == set(list_heads())


@pytest.mark.parametrize("name,d", CASES)
def test_param_count_matches_official_minus_dead(name, d):
    totals, dead = OFFICIAL[name]
    head = create_head(name, d, C)
    assert head.num_params() == totals[d] - dead(d)


def test_headline_counts():
    assert create_head("ep", 768, 1000).num_params() == 1_383_400
    assert create_head("linear", 768, 1000).num_params() == 769_000
    # EP knobs from the paper / logs
    assert create_head("ep", 768, 1000, num_queries=8).num_params() == 1_364_968
    assert create_head("ep", 768, 1000, num_queries=48, d_out=8).num_params() == 207_592
