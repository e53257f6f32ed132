"""ViT student spaces on 32×32 inputs, specs as compact JSON.

``autoformer`` (AutoFormer-Ti, Chen et al. 2021): ``{"depth": 12, "embed_dim": 192,
"mlp_ratio": [...], "num_heads": [...]}`` with embed_dim in {192, 216, 240}, depth in
{12, 13, 14}, per-layer MLP ratio in {3.5, 4} and heads in {3, 4} (head dim 64); patch 4.
``k1`` are the patch tokens after the penultimate block, ``k2`` the final normalised patch
tokens (both as ``n d m``: channels × positions, kind ``seq``), ``k3`` the logits.

``pit`` (PiT, Heo et al. 2021): ``{"base_dim": 32, "depths": [2, 6, 4], "heads": [2, 4, 8],
"mlp_ratio": 4}``; stage widths base_dim × heads, spatial token maps 8×8 → 4×4 → 2×2 joined by
depth-wise strided pooling. ``k1``/``k2`` are the stage-2/stage-3 maps (kind ``fmap``).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from primitives import Kind

from .base import FeatureNet, SearchSpace, SpecError, seeded_init

__all__ = ["AutoFormerSpace", "PiTSpace"]

HEAD_DIM = 64


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, m, _ = x.shape
        q, k, v = self.qkv(x).reshape(n, m, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(n, m, -1))

    def extra_macs(self, x: Tensor) -> int:
        m = x.shape[1]
        return 2 * m * m * self.heads * self.head_dim  # q·kᵀ and att·v


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Tokens(nn.Module):
    """Class token and position embedding, initialised from the model's seed."""

    def __init__(self, dim: int, positions: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, positions, dim))

    def reset_seeded(self, g: torch.Generator) -> None:
        self.cls.copy_(torch.randn(self.cls.shape, generator=g) * 0.02)
        self.pos.copy_(torch.randn(self.pos.shape, generator=g) * 0.02)


def _patch(input_shape: tuple[int, int, int]) -> int:
    """Patch size giving an 8×8 token grid on 32×32 inputs and 7×7 on 14×14 ones."""
    return max(2, input_shape[1] // 8)


class AutoFormerNet(FeatureNet):
    feature_kinds: ClassVar[dict[str, Kind]] = {"k1": Kind.SEQ, "k2": Kind.SEQ,
                                                "k3": Kind.VEC}

    def __init__(self, embed_dim: int, mlp_ratio: list[float], num_heads: list[int],
                 num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)
                 ) -> None:
        super().__init__()
        patch, image = _patch(input_shape), input_shape[1]
        self.patch = nn.Conv2d(input_shape[0], embed_dim, patch, patch)
        self.tokens = _Tokens(embed_dim, (image // patch) ** 2 + 1)
        self.blocks = nn.ModuleList(Block(embed_dim, h, r, HEAD_DIM)
                                    for r, h in zip(mlp_ratio, num_heads, strict=True))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.tokens.pos
        k1 = t
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i == len(self.blocks) - 2:
                k1 = t
        t = self.norm(t)
        return {"k1": k1[:, 1:].transpose(1, 2), "k2": t[:, 1:].transpose(1, 2),
                "k3": self.head(t[:, 0])}


def _dump(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _load(space: str, spec: str, keys: set[str]) -> dict[str, Any]:
    try:
        d = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{space}: spec is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(d, dict):
        raise SpecError(f"{space}: spec must be a JSON object")
    missing, extra = keys - set(d), set(d) - keys
    if missing or extra:
        raise SpecError(f"{space}: spec keys: missing {sorted(missing)}, unknown {sorted(extra)}")
    return d


def _choice(space: str, field: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise SpecError(f"{space}: field {field} = {value!r} not in {allowed}")
    return value


class AutoFormerSpace(SearchSpace):
    name = "autoformer"
    input_shape = (3, 32, 32)
    EMBED = (192, 216, 240)
    DEPTH = (12, 13, 14)
    RATIO = (3.5, 4.0)
    HEADS = (3, 4)

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes

    def _parse(self, spec: str) -> dict[str, Any]:
        d = _load(self.name, spec, {"embed_dim", "depth", "mlp_ratio", "num_heads"})
        _choice(self.name, "embed_dim", d["embed_dim"], self.EMBED)
        depth = _choice(self.name, "depth", d["depth"], self.DEPTH)
        for key, allowed in (("mlp_ratio", self.RATIO), ("num_heads", self.HEADS)):
            vals = d[key]
            if not isinstance(vals, list) or len(vals) != depth:
                raise SpecError(f"{self.name}: field {key} must list {depth} values (one a layer)")
            for i, v in enumerate(vals):
                _choice(self.name, f"{key}[{i}]", v, allowed)
        d["mlp_ratio"] = [float(v) for v in d["mlp_ratio"]]
        return d

    def validate(self, spec: str) -> str:
        return _dump(self._parse(spec))

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        d = self._parse(spec)
        net = AutoFormerNet(d["embed_dim"], d["mlp_ratio"], d["num_heads"], self.num_classes,
                            self.input_shape)
        return seeded_init(net, seed)  # type: ignore[return-value]

    def size(self) -> int:
        per_layer = len(self.RATIO) * len(self.HEADS)
        return len(self.EMBED) * sum(per_layer**d for d in self.DEPTH)

    def sample(self, rng: random.Random) -> str:
        depth = rng.choice(self.DEPTH)
        return _dump({"embed_dim": rng.choice(self.EMBED), "depth": depth,
                      "mlp_ratio": [rng.choice(self.RATIO) for _ in range(depth)],
                      "num_heads": [rng.choice(self.HEADS) for _ in range(depth)]})

    def mutate(self, spec: str, rng: random.Random) -> str:
        d = self._parse(spec)
        field = rng.choice(["embed_dim", "depth", "mlp_ratio", "num_heads"])
        if field == "embed_dim":
            d["embed_dim"] = rng.choice([e for e in self.EMBED if e != d["embed_dim"]])
        elif field == "depth":
            new = rng.choice([x for x in self.DEPTH if x != d["depth"]])
            for key, allowed in (("mlp_ratio", self.RATIO), ("num_heads", self.HEADS)):
                vals = d[key][:new]
                d[key] = vals + [rng.choice(allowed) for _ in range(new - len(vals))]
            d["depth"] = new
        else:
            allowed = self.RATIO if field == "mlp_ratio" else self.HEADS
            i = rng.randrange(d["depth"])
            d[field][i] = rng.choice([v for v in allowed if v != d[field][i]])
        return _dump(d)

    def teachers(self) -> list[str]:
        return ["vit-s"]

    def build_teacher(self, name: str = "vit-s", seed: int = 0) -> FeatureNet:
        self.check_teacher(name)
        net = AutoFormerNet(384, [4.0] * 12, [6] * 12, self.num_classes, self.input_shape)
        return seeded_init(net, seed)  # type: ignore[return-value]


class _Pool(nn.Module):
    """PiT pooling: grouped strided conv on the token map (depth-wise when the width grows by
    a whole factor; the published space lets a stage narrow too, so the groups are the widths'
    common divisor), linear on the class token."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 2, 1, groups=math.gcd(c_in, c_out))
        self.fc = nn.Linear(c_in, c_out)

    def forward(self, fmap: Tensor, cls: Tensor) -> tuple[Tensor, Tensor]:
        return self.conv(fmap), self.fc(cls)


class PiTNet(FeatureNet):
    def __init__(self, base_dim: int, depths: list[int], heads: list[int], mlp_ratio: float,
                 num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 32, 32)
                 ) -> None:
        super().__init__()
        dims = [base_dim * h for h in heads]
        patch = _patch(input_shape)
        self.patch = nn.Conv2d(input_shape[0], dims[0], patch, patch)
        # one position per patch (8x8 on 32x32 inputs); the class token has none
        self.tokens = _Tokens(dims[0], (input_shape[1] // patch) * (input_shape[2] // patch))
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(dims[s], heads[s], mlp_ratio, base_dim) for _ in range(depths[s]))
            for s in range(3))
        self.pools = nn.ModuleList(_Pool(dims[s], dims[s + 1]) for s in range(2))
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        fmap = self.patch(x)
        n, c, h, w = fmap.shape
        fmap = fmap + self.tokens.pos.transpose(1, 2).reshape(1, c, h, w)
        cls = self.tokens.cls.expand(n, -1, -1)
        maps = []
        for s, blocks in enumerate(self.stages):
            if s > 0:
                fmap, cls = self.pools[s - 1](fmap, cls)
            n, c, h, w = fmap.shape
            t = torch.cat([cls, fmap.flatten(2).transpose(1, 2)], dim=1)
            assert isinstance(blocks, nn.ModuleList)
            for blk in blocks:
                t = blk(t)
            cls, fmap = t[:, :1], t[:, 1:].transpose(1, 2).reshape(n, c, h, w)
            maps.append(fmap)
        return {"k1": maps[1], "k2": maps[2], "k3": self.head(self.norm(cls[:, 0]))}


class PiTSpace(SearchSpace):
    """The published PiT search space (as in the Auto-DAS/DisWOT experiments): base dim
    {16, 24, 32, 40}, one MLP ratio {2, 4, 6, 8}, stage depths {1, 2, 3} / {4, 6, 8} /
    {2, 4, 6}, heads {2, 4, 8} in every stage; stage width = base dim × heads."""

    name = "pit"
    input_shape = (3, 32, 32)
    BASE = (16, 24, 32, 40)
    RATIO = (2.0, 4.0, 6.0, 8.0)
    DEPTHS = ((1, 2, 3), (4, 6, 8), (2, 4, 6))
    HEADS = ((2, 4, 8), (2, 4, 8), (2, 4, 8))

    def __init__(self, num_classes: int = 10) -> None:
        self.num_classes = num_classes

    def _parse(self, spec: str) -> dict[str, Any]:
        d = _load(self.name, spec, {"base_dim", "depths", "heads", "mlp_ratio"})
        _choice(self.name, "base_dim", d["base_dim"], self.BASE)
        d["mlp_ratio"] = float(_choice(self.name, "mlp_ratio", d["mlp_ratio"], self.RATIO))
        for key, allowed in (("depths", self.DEPTHS), ("heads", self.HEADS)):
            if not isinstance(d[key], list) or len(d[key]) != 3:
                raise SpecError(f"{self.name}: field {key} must list 3 values (one a stage)")
            for s, v in enumerate(d[key]):
                _choice(self.name, f"{key}[{s}]", v, allowed[s])
        return d

    def validate(self, spec: str) -> str:
        return _dump(self._parse(spec))

    def build(self, spec: str, seed: int = 0) -> FeatureNet:
        d = self._parse(spec)
        net = PiTNet(d["base_dim"], d["depths"], d["heads"], d["mlp_ratio"], self.num_classes,
                     self.input_shape)
        return seeded_init(net, seed)  # type: ignore[return-value]

    def enumerate(self) -> Iterator[str]:
        for b, r, d, h in itertools.product(self.BASE, self.RATIO, itertools.product(*self.DEPTHS),
                                            itertools.product(*self.HEADS)):
            yield _dump({"base_dim": b, "depths": list(d), "heads": list(h), "mlp_ratio": r})

    def size(self) -> int:
        return len(self.BASE) * len(self.RATIO) * math.prod(
            len(c) for c in (*self.DEPTHS, *self.HEADS))

    def sample(self, rng: random.Random) -> str:
        return _dump({"base_dim": rng.choice(self.BASE), "mlp_ratio": rng.choice(self.RATIO),
                      "depths": [rng.choice(c) for c in self.DEPTHS],
                      "heads": [rng.choice(c) for c in self.HEADS]})

    def mutate(self, spec: str, rng: random.Random) -> str:
        d = self._parse(spec)
        field = rng.choice(["base_dim", "mlp_ratio", "depths", "heads"])
        if field == "base_dim":
            d[field] = rng.choice([v for v in self.BASE if v != d[field]])
        elif field == "mlp_ratio":
            d[field] = rng.choice([v for v in self.RATIO if v != d[field]])
        else:
            allowed = self.DEPTHS if field == "depths" else self.HEADS
            s = rng.randrange(3)
            d[field][s] = rng.choice([v for v in allowed[s] if v != d[field][s]])
        return _dump(d)

    def teachers(self) -> list[str]:
        return ["pit-s"]

    def build_teacher(self, name: str = "pit-s", seed: int = 0) -> FeatureNet:
        self.check_teacher(name)
        return seeded_init(PiTNet(48, [2, 6, 4], [3, 6, 12], 4.0, self.num_classes,
                                  self.input_shape), seed)  # type: ignore[return-value]
