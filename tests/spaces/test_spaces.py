"""Search spaces: enumeration counts, validation errors, shapes, params/FLOPs, seeding."""

from __future__ import annotations

import random

import pytest
import torch

from gp_proxy.spaces import SpecError, count_flops, count_params, get_space, space_names
from primitives import GpProxyError
from primitives.reference import weight_layers

SPACES = space_names()


def test_all_five_spaces_are_registered() -> None:
    assert set(SPACES) == {"fmnist-cnn", "cifar-resnet-depth", "nb201", "autoformer", "pit"}
    with pytest.raises(GpProxyError, match="did you mean nb201"):
        get_space("nb210")


@pytest.mark.parametrize(("name", "count"), [("cifar-resnet-depth", 64), ("nb201", 15625),
                                             ("fmnist-cnn", 162), ("pit", 11664)])
def test_enumeration_counts(name: str, count: int) -> None:
    space = get_space(name)
    specs = list(space.enumerate())
    assert len(specs) == count == space.size()
    assert len(set(specs)) == count
    for spec in specs[:: max(1, count // 50)]:
        assert space.validate(spec) == spec


def test_autoformer_is_sampled_not_enumerated() -> None:
    space = get_space("autoformer")
    with pytest.raises(SpecError, match="too large"):
        next(space.enumerate())
    assert space.size() == 3 * (4**12 + 4**13 + 4**14)


@pytest.mark.parametrize("name", SPACES)
def test_sample_mutate_build_features(name: str) -> None:
    space = get_space(name)
    rng = random.Random(1)
    spec = space.sample(rng)
    assert space.validate(spec) == spec
    child = space.mutate(spec, rng)
    assert child != spec and space.validate(child) == child
    model = space.build(spec, seed=0)
    x = torch.randn(2, *space.input_shape)
    feats = model.features(x)
    assert set(feats) == {"k1", "k2", "k3"}
    assert feats["k3"].shape == (2, space.num_classes)
    for key in ("k1", "k2"):
        rank = {"fmap": 4, "seq": 3, "vec": 2}[model.feature_kinds[key].value]
        assert feats[key].dim() == rank and feats[key].shape[0] == 2
    torch.testing.assert_close(model(x), feats["k3"])
    assert count_params(model) > 0 and count_flops(model, space.input_shape) > 0
    assert weight_layers(model)


@pytest.mark.parametrize("name", SPACES)
def test_same_seed_same_model(name: str) -> None:
    space = get_space(name)
    spec = space.sample(random.Random(3))
    a, b, c = space.build(spec, seed=5), space.build(spec, seed=5), space.build(spec, seed=6)
    for (ka, va), (_, vb), (_, _vc) in zip(a.state_dict().items(), b.state_dict().items(),
                                          c.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(),
                                                         c.state_dict().values(), strict=True))


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("cifar-resnet-depth", "358", "stage 3 has 8 blocks"),
    ("cifar-resnet-depth", "35", "three digits"),
    ("fmnist-cnn", "w10-d123-k3", "base width 10"),
    ("fmnist-cnn", "w8-d143-k3", "stage 2 depth 4"),
    ("fmnist-cnn", "w8-d123-k7", "kernel 7"),
    ("nb201", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("nb201", "|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 inputs"),
    ("autoformer", '{"embed_dim":200,"depth":12,"mlp_ratio":[],"num_heads":[]}',
     "embed_dim = 200"),
    ("autoformer", "{bad json", "not JSON"),
    ("pit", '{"base_dim":32,"depths":[1,5,4],"heads":[2,4,8]}', "missing ['mlp_ratio']"),
])
def test_validation_names_the_field(name: str, spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_space(name).validate(spec)


def test_params_and_flops_by_hand() -> None:
    space = get_space("fmnist-cnn")
    model = space.build("w8-d111-k3")
    # conv 1->8 (3x3), 8->16, 16->32; BN 2 params per channel; fc 32->10 with bias
    convs = 8 * 9 + 16 * 8 * 9 + 32 * 16 * 9
    assert count_params(model) == convs + 2 * (8 + 16 + 32) + 32 * 10 + 10
    # MACs: 14x14x8x9 + 7x7x16x72 + 4x4x32x144 + 32x10
    assert count_flops(model, space.input_shape) == 196 * 72 + 49 * 16 * 72 + 16 * 32 * 144 + 320


def test_cifar_resnet_teachers() -> None:
    space = get_space("cifar-resnet-depth")
    assert space.teachers() == ["resnet20", "resnet56", "resnet110"]
    r20 = space.build_teacher("resnet20")
    assert count_params(r20) == count_params(space.build("333"))
    with pytest.raises(SpecError, match="unknown teacher"):
        space.build_teacher("resnet18")


def test_pit_is_the_published_space() -> None:
    """Base dim {16, 24, 32, 40}, MLP ratio {2, 4, 6, 8}, stage depths {1,2,3}/{4,6,8}/{2,4,6},
    heads {2, 4, 8} in every stage (a stage may narrow: heads 8 then 2)."""
    space = get_space("pit")
    spec = '{"base_dim":16,"depths":[3,8,6],"heads":[8,2,4],"mlp_ratio":6}'
    canon = space.validate(spec)
    feats = space.build(canon).features(torch.randn(2, 3, 32, 32))
    assert feats["k1"].shape == (2, 32, 4, 4) and feats["k2"].shape == (2, 64, 2, 2)
    with pytest.raises(SpecError, match="depths"):
        space.validate('{"base_dim":16,"depths":[3,5,6],"heads":[8,2,4],"mlp_ratio":6}')
    with pytest.raises(SpecError, match="mlp_ratio"):
        space.validate('{"base_dim":16,"depths":[3,8,6],"heads":[8,2,4],"mlp_ratio":3.5}')
