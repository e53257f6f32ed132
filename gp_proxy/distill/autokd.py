"""Auto-KD: search the distiller for one teacher and one student by Monte Carlo tree search,
with random search and a DEAP genetic algorithm over the same space as baselines.

Every candidate is scored by a **proxy training**: a short distillation (``epochs`` epochs on
``train_size`` images of the benchmark's training subset; the teacher's features of those
images computed once, so no teacher forward runs during the search) and the student's
accuracy on a validation split carved from the rest of the training subset (never the test
set). The reward is that validation accuracy: it is what the search is for, it needs no
weighting against another term, and a diverged training scores 0.

MCTS (one tree level per decision of :mod:`gp_proxy.distill.distiller`): selection by UCT on rewards
min-max normalised over those seen so far (accuracies differ by a few points, so raw rewards
would leave the exploration term to decide), ``Q̂ + c · sqrt(ln N_parent / N_child)``;
expansion of one untried child; a uniform random rollout to a complete distiller; the reward
backed up the selected path. ``batch`` leaves are selected per round with a virtual loss (a
pending visit counts as a visit with the worst reward), so a round's proxy trainings run on
``workers`` processes and the tree is the same for any number of workers.

Resumable: every finished proxy training is appended to ``evaluations.jsonl`` (and the
distillations checkpoint per epoch). A restarted search replays the algorithm from its seed,
taking the rewards it already has from that file, so it rebuilds the same tree and continues;
``tree.json`` and ``best.json`` are rewritten atomically after every round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from primitives.errors import GpProxyError

from ..core.files import atomic_write_json
from ..evaluate.backends import optional_executor
from .distiller import DISTILLER_LEVELS, DistillerSpace

__all__ = ["ALGORITHMS", "Node", "SearchConfig", "mcts_search", "run_search", "uct"]

ALGORITHMS = ("mcts", "random", "gp")

Reward = Callable[[list[str]], list[float]]


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "mcts"
    budget: int = 32  # proxy trainings (distinct distillers)
    epochs: int = 3  # of each proxy training
    train_size: int = 3000  # images of the benchmark's training subset it trains on
    val_size: int = 1000  # images of the rest of that subset it is scored on
    exploration: float = 0.7  # the UCT constant c
    batch: int = 2  # leaves per MCTS round (virtual loss); candidates per GA/random round
    population: int = 8  # the GA's population
    seed: int = 0
    ce_weight: float = 1.0  # cross-entropy beside the distiller in proxy training

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise GpProxyError(f"algorithm {self.algorithm!r}: choose one of "
                               f"{', '.join(ALGORITHMS)}")
        if self.budget < 1 or self.batch < 1 or self.epochs < 1:
            raise GpProxyError("budget, batch and epochs must be at least 1")


# ---------------------------------------------------------------- the tree ------------------
@dataclass
class Node:
    prefix: tuple[Any, ...]
    children: dict[str, Node] = field(default_factory=dict)
    visits: int = 0
    total: float = 0.0
    pending: int = 0  # virtual visits of this round

    @property
    def mean(self) -> float:
        return self.total / self.visits if self.visits else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"visits": self.visits, "mean": self.mean,
                "children": {k: c.to_json() for k, c in self.children.items()}}


def uct(child: Node, parent_visits: int, exploration: float, lo: float, hi: float) -> float:
    """UCT of ``child``: its mean reward min-max normalised to [lo, hi] (pending visits count
    as visits of reward ``lo``) plus ``exploration · sqrt(ln N_parent / n_child)``. An
    unvisited child is infinite (tried first)."""
    n = child.visits + child.pending
    if n == 0:
        return math.inf
    span = hi - lo
    q = (child.total + child.pending * lo) / n
    q_hat = (q - lo) / span if span > 0 else 0.0
    return q_hat + exploration * math.sqrt(math.log(max(parent_visits, 1)) / n)


def _key(choice: Any) -> str:
    return f"{choice:g}" if isinstance(choice, float) else str(choice)


def mcts_search(space: DistillerSpace, reward: Reward, cfg: SearchConfig,
                on_round: Callable[[Node, dict[str, float]], None] | None = None
                ) -> tuple[Node, dict[str, float]]:
    """MCTS until ``cfg.budget`` distinct distillers have rewards; (root, rewards)."""
    rng = random.Random(cfg.seed)
    root = Node(())
    rewards: dict[str, float] = {}
    iterations = 0
    while len(rewards) < cfg.budget and iterations < 50 * cfg.budget:
        paths: list[tuple[list[Node], str]] = []
        for _ in range(min(cfg.batch, cfg.budget - len(rewards))):
            iterations += 1
            lo, hi = (min(rewards.values()), max(rewards.values())) if rewards else (0.0, 1.0)
            node, path = root, [root]
            while True:  # selection down fully expanded nodes
                choices = space.choices(node.prefix)
                if not choices:
                    break
                untried = [c for c in choices if _key(c) not in node.children]
                if untried:  # expansion
                    c = rng.choice(untried)
                    child = Node((*node.prefix, c))
                    node.children[_key(c)] = child
                    path.append(child)
                    node = child
                    break
                parent_n = node.visits + node.pending
                node = max((node.children[_key(c)] for c in choices),
                           key=lambda ch: uct(ch, parent_n, cfg.exploration, lo, hi))
                path.append(node)
            decisions = space.sample(rng, node.prefix)  # rollout
            for n in path:
                n.pending += 1
            paths.append((path, str(space.distiller(decisions))))
        new = list(dict.fromkeys(s for _, s in paths if s not in rewards))
        rewards.update(zip(new, reward(new), strict=True))
        for path, s in paths:
            for n in path:
                n.pending -= 1
                n.visits += 1
                n.total += rewards[s]
        if on_round is not None:
            on_round(root, rewards)
    return root, rewards


def random_search(space: DistillerSpace, reward: Reward, cfg: SearchConfig,
                  on_round: Callable[[Node, dict[str, float]], None] | None = None
                  ) -> tuple[Node, dict[str, float]]:
    """Distillers drawn uniformly level by level."""
    rng = random.Random(cfg.seed)
    rewards: dict[str, float] = {}
    tries = 0
    while len(rewards) < cfg.budget and tries < 50 * cfg.budget:
        batch: list[str] = []
        while len(batch) < min(cfg.batch, cfg.budget - len(rewards)) and tries < 50 * cfg.budget:
            tries += 1
            s = str(space.distiller(space.sample(rng)))
            if s not in rewards and s not in batch:
                batch.append(s)
        rewards.update(zip(batch, reward(batch), strict=True))
        if on_round is not None:
            on_round(Node(()), rewards)
    return Node(()), rewards


def ga_search(space: DistillerSpace, reward: Reward, cfg: SearchConfig,
              on_round: Callable[[Node, dict[str, float]], None] | None = None
              ) -> tuple[Node, dict[str, float]]:
    """A DEAP genetic algorithm: a genome is one number in [0, 1) per level, decoded level by
    level into that level's valid choices (so every genome is a valid distiller); tournament
    selection (3), uniform crossover, each gene redrawn with probability 1/levels, the best
    genome kept. Generations run until ``cfg.budget`` distinct distillers have rewards."""
    from deap import base, creator, tools

    if not hasattr(creator, "DistillerGenome"):
        creator.create("DistillerFitness", base.Fitness, weights=(1.0,))
        creator.create("DistillerGenome", list, fitness=creator.DistillerFitness)
    levels = len(DISTILLER_LEVELS)

    def decode(genome: Sequence[float]) -> str:
        prefix: tuple[Any, ...] = ()
        for g in genome:
            choices = space.choices(prefix)
            if not choices:
                break
            prefix = (*prefix, choices[min(int(g * len(choices)), len(choices) - 1)])
        return str(space.distiller(prefix))

    rewards: dict[str, float] = {}
    state = random.getstate()  # DEAP's operators draw from the global random module
    random.seed(cfg.seed)
    try:
        population = [creator.DistillerGenome(random.random() for _ in range(levels))
                      for _ in range(cfg.population)]
        stall = 0
        while len(rewards) < cfg.budget and stall < 50:
            wanted = list(dict.fromkeys(d for d in map(decode, population) if d not in rewards))
            wanted = wanted[:cfg.budget - len(rewards)]
            stall = 0 if wanted else stall + 1
            for k in range(0, len(wanted), cfg.batch):
                chunk = wanted[k:k + cfg.batch]
                rewards.update(zip(chunk, reward(chunk), strict=True))
            if on_round is not None and wanted:
                on_round(Node(()), rewards)
            scored = [g for g in population if decode(g) in rewards]
            for g in scored:
                g.fitness.values = (rewards[decode(g)],)
            offspring = [creator.DistillerGenome(g) for g in tools.selBest(scored, 1)]
            parents = tools.selTournament(scored, 2 * cfg.population, tournsize=3)
            for a, b in zip(parents[::2], parents[1::2], strict=True):
                if len(offspring) >= cfg.population:
                    break
                c1, _ = tools.cxUniform(creator.DistillerGenome(a), creator.DistillerGenome(b),
                                        indpb=0.5)
                offspring.append(creator.DistillerGenome(
                    random.random() if random.random() < 1.0 / levels else v for v in c1))
            population = offspring
    finally:
        random.setstate(state)
    return Node(()), rewards


SEARCHES = {"mcts": mcts_search, "random": random_search, "gp": ga_search}


# ---------------------------------------------------------------- proxy training ------------
@dataclass(frozen=True)
class ProxyTask:
    """What one worker needs to score distillers: pickled to it once per batch."""

    benchmark: str
    student: str
    data: str | None
    cfg: SearchConfig
    folder: str


_CONTEXT: dict[str, Any] = {}


def _context(task: ProxyTask) -> dict[str, Any]:
    """The student space, teacher features of the proxy-training images and the validation
    split, computed once per process."""
    key = json.dumps([task.benchmark, task.student, task.data, asdict(task.cfg)])
    if _CONTEXT.get("key") == key:
        return _CONTEXT
    from ..bench.benchmark import load_benchmark
    from ..bench.data import Split

    torch.set_num_threads(1)
    bench = load_benchmark(task.benchmark)
    train, _ = bench.load_data(task.data)
    n_train, n_val = task.cfg.train_size, task.cfg.val_size
    if n_train + n_val > len(train):
        raise GpProxyError(f"train_size {n_train} + val_size {n_val} exceed the benchmark's "
                           f"{len(train)} training images")
    teacher = bench.trained_teacher()
    proxy_train = Split(train.images[:n_train], train.labels[:n_train])
    with torch.no_grad():
        feats = [teacher.features(proxy_train.images[i:i + 500]) for i in range(0, n_train, 500)]
    teacher_features = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}
    _CONTEXT.clear()
    _CONTEXT.update(key=key, space=bench.search_space(), teacher=teacher, train=proxy_train,
                    val=Split(train.images[n_train:n_train + n_val],
                              train.labels[n_train:n_train + n_val]),
                    teacher_features=teacher_features)
    return _CONTEXT


def proxy_train(task: ProxyTask, distiller: str) -> tuple[float, float]:
    """(validation accuracy, seconds) of one proxy training (0 when it diverges)."""
    from .runner import DistillConfig, distill

    ctx = _context(task)
    t0 = time.perf_counter()
    cfg = DistillConfig(epochs=task.cfg.epochs, ce_weight=task.cfg.ce_weight,
                        losses={"distiller": 1.0}, distiller=distiller, seed=task.cfg.seed)
    run = Path(task.folder) / "proxy" / hashlib.sha1(distiller.encode()).hexdigest()[:16]
    student = ctx["space"].build(task.student, seed=task.cfg.seed)
    try:
        metrics = distill(student, ctx["teacher"], ctx["train"], ctx["val"], cfg, run,
                          teacher_features=ctx["teacher_features"])
        acc = float(metrics["test_acc"])  # the validation split is distill's "test" here
    except FloatingPointError:
        acc = 0.0
    return acc, time.perf_counter() - t0


def _score(args: tuple[ProxyTask, str]) -> tuple[float, float]:
    return proxy_train(*args)


def run_search(benchmark: str, student: str, cfg: SearchConfig, out: str | os.PathLike[str],
               data: str | None = None, workers: int = 1,
               progress: Callable[[int, int, str], None] | None = None,
               reward: Reward | None = None, backend: str = "processes",
               scheduler: str | None = None) -> dict[str, Any]:
    """Search the distiller for ``student`` with the benchmark's teacher; resumable in ``out``.
    A round's proxy trainings run on ``backend`` (``processes``: ``workers`` local processes,
    in this process when 1; ``dask``: the cluster at ``scheduler`` or a LocalCluster).
    ``reward`` replaces proxy training (tests). Returns the best record."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"benchmark": str(benchmark), "student": student, "search": asdict(cfg)}
    cfg_file = folder / "search.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text()) != settings:
        raise GpProxyError(f"{folder}: holds a search with other settings")
    atomic_write_json(cfg_file, settings)
    log = folder / "evaluations.jsonl"
    done: dict[str, dict[str, Any]] = {}
    if log.exists():
        for i, line in enumerate(log.read_text().splitlines(), 1):
            try:
                rec = json.loads(line)
                done[str(rec["distiller"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                if i == len(log.read_text().splitlines()):
                    continue  # a line cut by a kill: that training runs again
                raise GpProxyError(f"{log}: line {i} is not an evaluation record") from None
    task = ProxyTask(str(benchmark), student, data, cfg, str(folder))
    space = DistillerSpace(_teacher_shapes(benchmark))
    stack = contextlib.ExitStack()
    pool = (stack.enter_context(optional_executor(backend, workers, scheduler))
            if reward is None else None)

    def evaluate(batch: list[str]) -> list[float]:
        todo = [s for s in batch if s not in done]
        if todo:
            if reward is not None:
                results = [(r, 0.0) for r in reward(todo)]
            elif pool is not None:
                results = list(pool.map(_score, [(task, s) for s in todo]))
            else:
                results = [proxy_train(task, s) for s in todo]
            with log.open("a") as fh:
                for s, (acc, sec) in zip(todo, results, strict=True):
                    rec = {"distiller": s, "reward": acc, "seconds": sec}
                    done[s] = rec
                    fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return [float(done[s]["reward"]) for s in batch]

    def on_round(root: Node, rewards: dict[str, float]) -> None:
        best = max(rewards, key=lambda s: rewards[s])
        atomic_write_json(folder / "tree.json", {"algorithm": cfg.algorithm,
                                                 "levels": list(DISTILLER_LEVELS),
                                                 "root": root.to_json()})
        atomic_write_json(folder / "best.json", _best(best, rewards, done))
        if progress is not None:
            progress(len(rewards), cfg.budget, best)

    try:
        _, rewards = SEARCHES[cfg.algorithm](space, evaluate, cfg, on_round)
    finally:
        stack.close()
    best = max(rewards, key=lambda s: rewards[s])
    record = _best(best, rewards, done)
    atomic_write_json(folder / "best.json", record)
    return record


def _best(best: str, rewards: dict[str, float], done: dict[str, dict[str, Any]]
          ) -> dict[str, Any]:
    ranked = sorted(rewards, key=lambda s: -rewards[s])
    return {"best": best, "reward": rewards[best], "evaluated": len(rewards),
            "proxy_seconds": sum(float(done[s].get("seconds", 0.0)) for s in rewards if s in done),
            "top": [{"distiller": s, "reward": rewards[s]} for s in ranked[:10]]}


def _teacher_shapes(benchmark: str) -> dict[str, tuple[int, ...]]:
    from ..bench.benchmark import load_benchmark

    bench = load_benchmark(benchmark)
    teacher = bench.trained_teacher()
    x = torch.zeros((2, *bench.search_space().input_shape))
    with torch.no_grad():
        return {k: tuple(v.shape) for k, v in teacher.features(x).items()}

