"""Parameter counts against the official efficient-probing code (counted by building its heads).

vizoo leaves out parameters whose gradient is zero for every input and every weight value in the official
heads (pool -> BatchNorm1d(affine=False), in training mode -> Linear): unused parameters, biases that shift
all attention logits of a query equally (the softmax cancels them), and biases that shift the pooled vector by
a constant (the head's train-mode BatchNorm cancels them). Each such difference is listed here as a function
of D and documented in the head's docstring; tests/heads/test_contract.py checks that no such parameter is
left.
"""
import pytest
import torch

from vizoo.heads import create_head, describe_heads, list_heads

C = 1000
# name -> ({D: official total}, dead parameters left out by vizoo as a function of D)
OFFICIAL = {
    "linear": ({768: 769_000, 384: 385_000, 1024: 1_025_000}, lambda d: 0),
    # DINOv2's eval/linear.py: nn.Linear(D, C) alone
    "plain_linear": ({768: 769_000, 384: 385_000, 1024: 1_025_000}, lambda d: 0),
    "ep": ({768: 1_383_400, 384: 544_744, 1024: 2_106_344}, lambda d: 0),
    "mhca": ({768: 1_949_416, 384: 680_296, 1024: 3_123_176}, lambda d: 0),
    # the predictor's last bias (a constant added to every token's score)
    "abmilp": ({768: 3_720_425, 384: 1_123_433, 1024: 6_270_953}, lambda d: 1),
    # LN bias: constant logit shift in the keys, constant output shift (removed by the head BN) in the values
    "simpool": ({768: 1_950_184, 384: 680_680, 1024: 3_124_200}, lambda d: d),
    "esimpool": ({768: 770_536, 384: 385_768, 1024: 1_027_048}, lambda d: 0),
    # the key bias (in the fused qkv.bias); the value bias and proj.bias (constant output shift)
    "clip": ({768: 3_284_200, 384: 1_052_776, 1024: 5_427_176}, lambda d: 3 * d),
    # 195 of the 196 learned queries never reach the output
    "coca": ({768: 1_805_032, 384: 903_016, 1024: 2_406_376}, lambda d: 195 * d),
    # norm2_cross (built, unused), norm1_k.bias (shifts every logit equally), norm1_v.bias and proj.bias
    # (constant output shift)
    "cae": ({768: 3_135_976, 384: 978_664, 1024: 5_229_544}, lambda d: 5 * d),
    # the key bias (the k half of kv.bias) and mlp.fc2.bias (constant output shift)
    "vjepa": ({768: 7_857_640, 384: 2_159_848, 1024: 13_622_248}, lambda d: 2 * d),
    "siglip": ({768: 7_854_568, 384: 2_158_312, 1024: 13_618_152}, lambda d: 2 * d),
    # the key bias (k.bias) and the final norm's bias (constant output shift)
    "cait": ({768: 7_860_712, 384: 2_161_384, 1024: 13_626_344}, lambda d: 2 * d),
    # mlp.fc2.bias (added to every token: constant shift of the mean)
    "dinov2_block": ({768: 7_854_568, 384: 2_158_312, 1024: 13_618_152}, lambda d: d),
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
    with torch.device("meta"):        # counts are structural; skip allocating and initialising ~14M weights
        head = create_head(name, d, C)
    assert head.num_params() == totals[d] - dead(d)


def test_headline_counts():
    assert create_head("ep", 768, 1000).num_params() == 1_383_400
    assert create_head("linear", 768, 1000).num_params() == 769_000
    # EP knobs from the paper / logs
    assert create_head("ep", 768, 1000, num_queries=8).num_params() == 1_364_968
    assert create_head("ep", 768, 1000, num_queries=48, d_out=8).num_params() == 207_592


def test_describe_heads_table_at_768():
    rows = {r["name"]: r for r in describe_heads(768, C, num_tokens=196)}
    assert set(rows) == set(OFFICIAL)
    for name, (totals, dead) in OFFICIAL.items():
        assert rows[name]["params"] == totals[768] - dead(768)
    assert rows["ep"]["macs"] == 2 * 32 * 196 * 768 + 768 * 768 + 768 * 1000   # 10,991,616
    assert rows["mhca"]["macs"] == 2 * 196 * 768 * 768 + 2 * 196 * 768 + 768 * 1000
    assert rows["linear"]["macs"] == 768_000
    assert describe_heads(768, C, 196, names=["ep"], options={"ep": {"use_prefix": True}})[0]["macs"] is None
