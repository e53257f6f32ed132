"""Zero-cost proxies on tiny networks, against hand computations of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from gp_proxy.baselines.zerocost import student_measures, zero_cost
from gp_proxy.spaces import FeatureNet, get_space

X = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]])
Y = torch.tensor([0, 1, 1])
W = torch.tensor([[0.2, -0.4], [0.7, 0.1]])


def _linear() -> nn.Module:
    m = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.weight.copy_(W)
    return m


def _ce_grad(w: np.ndarray) -> np.ndarray:
    """d mean CE / dW for logits = x Wᵀ, by hand."""
    x, y = X.double().numpy(), Y.numpy()
    z = x @ w.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return p.T @ x / len(y)


def test_gradient_proxies_match_hand_computation() -> None:
    w = W.double().numpy()
    g = _ce_grad(w)
    assert zero_cost("grad_norm", _linear(), X, Y) == pytest.approx(np.linalg.norm(g), rel=1e-5)
    assert zero_cost("snip", _linear(), X, Y) == pytest.approx(np.abs(w * g).sum(), rel=1e-5)
    assert zero_cost("plain", _linear(), X, Y) == pytest.approx((w * g).sum(), rel=1e-5)
    assert zero_cost("l2_norm", _linear(), X, Y) == pytest.approx(np.linalg.norm(w), rel=1e-6)
    eps = 1e-5  # Hessian-gradient product by central differences of the hand gradient
    hg = (_ce_grad(w + eps * g) - _ce_grad(w - eps * g)) / (2 * eps)
    assert zero_cost("grasp", _linear(), X, Y) == pytest.approx(-(w * hg).sum(), rel=1e-3)


def test_synflow_is_depth_times_r_for_positive_homogeneous_nets() -> None:
    net = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    w1 = net[0].weight.detach().abs().double()
    w2 = net[2].weight.detach().abs().double()
    r = float((w2 @ (w1 @ torch.ones(2, dtype=torch.float64))).sum())
    assert zero_cost("synflow", net, X, Y) == pytest.approx(2 * r, rel=1e-9)  # Euler


def test_nwot_counts_agreeing_relus() -> None:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    codes = (x > 0).double()
    k = codes @ codes.T + (1 - codes) @ (1 - codes).T  # [[2,1,0],[1,2,1],[0,1,2]]
    assert zero_cost("nwot", net, x, Y) == pytest.approx(math.log(abs(np.linalg.det(k))))


def test_jacov_of_a_linear_model() -> None:
    n, k = 3, 1e-5  # identical Jacobians: correlation all ones, eigenvalues n, 0, 0
    want = -((math.log(n + k) + 1 / (n + k)) + (n - 1) * (math.log(k) + 1 / k))
    assert zero_cost("jacov", _linear(), X + torch.tensor([[0.0, 0.0]]), Y) == \
        pytest.approx(want, rel=1e-4)


def test_fisher_matches_its_definition() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    a = net[1](net[0](X))
    a.retain_grad()
    nn.functional.cross_entropy(net[2](a), Y).backward()
    want = 0.5 * float(((a * a.grad) ** 2).sum().detach())  # one position per channel
    assert zero_cost("fisher", net, X, Y) == pytest.approx(want, rel=1e-5)


class _Identity(FeatureNet):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return {"k1": x, "k2": x, "k3": self.fc(x.flatten(1))}


def test_zen_of_an_identity_feature_is_log_of_the_perturbation_norm() -> None:
    x = torch.zeros(3, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    torch.randn(x.shape, generator=g)
    dz = torch.randn(x.shape, generator=g)
    assert zero_cost("zen", _Identity(), x, Y) == pytest.approx(
        math.log(float(torch.linalg.vector_norm(dz))), rel=1e-4)


@pytest.mark.parametrize("name", sorted(student_measures()))
def test_every_proxy_runs_on_a_space_model_and_leaves_it_untouched(name: str) -> None:
    space = get_space("fmnist-cnn")
    model = space.build("w8-d121-k3", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 1, 14, 14, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 10
    value = zero_cost(name, model, x, y)
    assert math.isfinite(value), name
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} changed {k}"
    assert all(p.grad is None for p in model.parameters())


def test_diswot_is_zero_for_an_identical_pair_and_negative_otherwise() -> None:
    from gp_proxy.baselines.zerocost import diswot

    space = get_space("fmnist-cnn")
    x = torch.randn(6, 1, 14, 14, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    a = space.build("w8-d111-k3", seed=0)
    assert diswot(a, a, x, y) == pytest.approx(0.0, abs=1e-6)
    teacher = space.build_teacher(seed=0)
    close, far = diswot(teacher, a, x, y), diswot(teacher, space.build("w16-d333-k5"), x, y)
    assert close < 0 and far < 0 and close != far
    # the semantic part by hand: CAMs of the labelled class from k2 and the classifier rows
    k2 = a.features(x)["k2"].detach()
    cam = torch.einsum("nchw,nc->nhw", k2, a.fc.weight.detach()[y]).reshape(6, -1)
    g = torch.nn.functional.normalize(cam @ cam.T, dim=1)
    assert torch.allclose(torch.linalg.vector_norm(g, dim=1), torch.ones(6))


def _space_models(name: str) -> tuple[nn.Module, nn.Module, Tensor, Tensor]:
    import random

    space = get_space(name)
    rng = random.Random(0)
    a = space.sample(rng)
    b = next(s for s in iter(lambda: space.sample(rng), None) if s != a)
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(1))
    return space.build(a, seed=0), space.build(b, seed=0), x, torch.arange(4) % 10


@pytest.mark.parametrize("space", ["fmnist-cnn", "cifar-resnet-depth", "nb201", "autoformer",
                                   "pit"])
def test_every_measure_scores_every_space_or_says_why(space: str) -> None:
    """Every student measure on two architectures of every space: finite and not the same
    value for both, or, where the measure hooks a module type the model lacks, one clear
    error (Fisher and NWOT were a constant 0 and NaN on the ResNets while their blocks applied
    ``F.relu``)."""
    from gp_proxy.baselines.zerocost import get_measure
    from gp_proxy.spaces import SPACES
    from primitives import GpProxyError

    assert set(SPACES) == {"fmnist-cnn", "cifar-resnet-depth", "nb201", "autoformer", "pit"}
    a, b, x, y = _space_models(space)
    for name in sorted(student_measures()):
        reads = get_measure(name).reads
        if reads is not None and not any(isinstance(m, reads) for m in a.modules()):
            with pytest.raises(GpProxyError, match=f"{name}.*{reads.__name__}"):
                zero_cost(name, a, x, y)
            continue
        va, vb = zero_cost(name, a, x, y), zero_cost(name, b, x, y)
        assert math.isfinite(va) and math.isfinite(vb), (space, name)
        assert va != vb, (space, name)


def test_resnet_activations_are_modules_that_hooks_see() -> None:
    model = get_space("cifar-resnet-depth").build("131", seed=0)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 5  # the stem and two per basic block
