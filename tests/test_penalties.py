"""Each penalty against a value computed by hand on a tiny two-member, one-row "ensemble"."""
import math

import pytest
import torch

from cmbrl.components.penalties import PENALTIES, get_penalty, requires_all_members

# Two members, one row, D = 2 (one observation dim + reward).
MEAN = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]]])  # (E=2, B=1, D=2)
STD = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
MEMBER = torch.tensor([0])  # row 0 was sampled from member 0


@pytest.mark.parametrize("name,expected", [
    ("max_aleatoric", 2.0),                     # max(||(1,0)||, ||(0,2)||)
    ("mopo", 2.0),
    ("max_pairwise_diff", 5.0),                 # ||(3,4) - (0,0)||
    ("max_center_distance", 2.5),               # centre (1.5, 2): distance 2.5 for both
    # mixture variance per dim: mean std^2 + var of means = (0.5 + 2.25, 2 + 4) -> norm of sqrt
    ("ensemble_std", math.sqrt(2.75 + 6.0)),
    ("individual_std", 1.0),                    # member 0's ||(1, 0)||
    ("combined", 0.5 * 1.0 + 0.5 * 2.0),
    ("none", 0.0),
])
def test_penalty_hand_computed(name, expected):
    u = get_penalty(name)(MEAN, STD, MEMBER)
    assert u.shape == (1,)
    assert u.item() == pytest.approx(expected, rel=1e-6)


def test_individual_std_uses_the_sampled_member():
    assert get_penalty("individual_std")(MEAN, STD, torch.tensor([1])).item() == pytest.approx(2.0)


def test_pairwise_is_not_center_distance_with_three_members():
    mean = torch.tensor([[[0.0]], [[0.0]], [[3.0]]])
    std = torch.zeros_like(mean)
    assert get_penalty("max_pairwise_diff")(mean, std, torch.tensor([0])).item() == pytest.approx(3.0)
    assert get_penalty("max_center_distance")(mean, std, torch.tensor([0])).item() == pytest.approx(2.0)


def test_batched_shapes():
    mean, std = torch.randn(5, 7, 12), torch.rand(5, 7, 12)
    member = torch.randint(5, (7,))
    for name, fn in PENALTIES.items():
        assert fn(mean, std, member).shape == (7,), name


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="max_aleatoric") as err:
        get_penalty("variance")
    assert "variance" in str(err.value)
    with pytest.raises(TypeError):
        get_penalty(1.0)


def test_callables_and_member_requirements():
    fn = lambda mean, std, member: std.sum(dim=(0, 2))  # noqa: E731
    assert get_penalty(fn) is fn and requires_all_members(fn)
    assert not requires_all_members(get_penalty("individual_std"))
    assert not requires_all_members(get_penalty("none"))
    assert requires_all_members(get_penalty("combined"))
