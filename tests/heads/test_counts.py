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
    # the predictor's last bias (a constant added to every token's score)
    "abmilp": ({768: 3_720_425, 384: 1_123_433, 1024: 6_270_953}, lambda d: 1),
    "simpool": ({768: 1_950_184, 384: 680_680, 1024: 3_124_200}, lambda d: 0),
    "esimpool": ({768: 770_536, 384: 385_768, 1024: 1_027_048}, lambda d: 0),
    # the key bias (fused into qkv.bias in the official module)
    "clip": ({768: 3_284_200, 384: 1_052_776, 1024: 5_427_176}, lambda d: d),
    # 195 of the 196 learned queries never reach the output
    "coca": ({768: 1_805_032, 384: 903_016, 1024: 2_406_376}, lambda d: 195 * d),
    # norm2_cross (built, unused) and norm1_k.bias (shifts every logit equally)
    "cae": ({768: 3_135_976, 384: 978_664, 1024: 5_229_544}, lambda d: 3 * d),
    # the key bias (the k half of kv.bias)
    "vjepa": ({768: 7_857_640, 384: 2_159_848, 1024: 13_622_248}, lambda d: d),
    "siglip": ({768: 7_854_568, 384: 2_158_312, 1024: 13_618_152}, lambda d: d),
    # the key bias (k.bias)
    "cait": ({768: 7_860_712, 384: 2_161_384, 1024: 13_626_344}, lambda d: d),
    "dinov2_block": ({768: 7_854_568, 384: 2_158_312, 1024: 13_618_152}, lambda d: 0),
    "cbam": ({768: 842_828, 384: 403_532, 1024: 1_156_172}, lambda d: 0),
    # conv1.bias (removed again by the train-mode BatchNorm that follows)
    "dolg": ({768: 1_361_897, 384: 533_993, 1024: 2_077_673}, lambda d: d),
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
