"""Question families about a :class:`~vlmprune.testbed.scenes.Scene`, one-word answers.

Families (chance levels: ``CHANCE`` is the uniform guess over the family's answer set; the held-out
set also reports the best constant answer, see :func:`majority_baseline`):

* ``attribute``  "what colour is the star?" (the only star) / "what shape is the red object?" (the
  only red one), prominent objects preferred (area-weighted). Uniform chance ~1/7.
* ``existence``  "is there a red star?" yes/no balanced; absent objects are adversarial (POPE): they
  share the colour or the shape (mostly both, with different partners) with present objects. 1/2.
* ``counting``   "how many red objects are there?" / "how many stars are there?" / "how many objects
  are there?" (answers 0-9), the answer drawn uniformly among the values feasible in the scene.
* ``spatial``    relation/context to a named anchor: "what shape is left of the red square?" (the
  nearest object whose centre lies in the 90-degree cone to the left), "what colour is the object
  nearest the star?"; only asked when the nearest is clearly nearer (margin 1.25x) than the next.
* ``small``      small-object detail: "what colour is the small star?" (the only small star),
  "what shape is the small red object?". Mostly asked of mixed scenes, next to large subjects.

Splits: training scenes use seeds ``< HELDOUT_BASE``; the held-out set uses seeds from
``HELDOUT_BASE`` upwards. Everything is a pure function of the seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vlmprune.testbed.scenes import COLOURS, SHAPES, Scene, make_scene

FAMILIES = ("attribute", "existence", "counting", "spatial", "small")
HELDOUT_BASE = 1_000_000_000
PLURAL = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}
DIGITS = tuple(str(i) for i in range(10))
ANSWERS = COLOURS + SHAPES + ("yes", "no") + DIGITS
DIRECTIONS = ("left of", "right of", "above", "below")
CHANCE = {
    "attribute": 0.5 / len(COLOURS) + 0.5 / len(SHAPES),
    "existence": 0.5,
    "counting": 1 / 5,  # answers are balanced over the feasible values, typically 4-6 of them
    "spatial": 0.5 / len(COLOURS) + 0.5 / len(SHAPES),
    "small": 0.5 / len(COLOURS) + 0.5 / len(SHAPES),
}


@dataclass(frozen=True)
class QA:
    family: str
    question: str
    answer: str
    seed: int = -1  # scene seed
    evidence: tuple[int, ...] = ()  # indices of the objects the answer depends on (training only)

    def to_dict(self) -> dict:
        return dict(family=self.family, question=self.question, answer=self.answer, seed=self.seed)


def _pick(rng, items, weights=None):
    if not items:
        return None
    if weights is None:
        return items[int(rng.integers(len(items)))]
    w = np.asarray(weights, float)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def attribute(scene: Scene, rng) -> QA | None:
    objs = scene.objects
    cands, weights = [], []
    for o in objs:
        if scene.count(shape=o.shape) == 1:
            cands.append(("colour", o))
            weights.append(o.area + 1)
        if scene.count(colour=o.colour) == 1:
            cands.append(("shape", o))
            weights.append(o.area + 1)
    c = _pick(rng, cands, weights)
    if c is None:
        return None
    what, o = c
    ev = (objs.index(o),)
    if what == "colour":
        return QA("attribute", f"what colour is the {o.shape}?", o.colour, scene.seed, ev)
    return QA("attribute", f"what shape is the {o.colour} object?", o.shape, scene.seed, ev)


def existence(scene: Scene, rng, answer: str | None = None) -> QA | None:
    if not scene.objects:
        return None
    answer = answer or ("yes" if rng.random() < 0.5 else "no")
    if answer == "yes":
        o = _pick(rng, scene.objects)
        ev = tuple(i for i, p in enumerate(scene.objects) if (p.colour, p.shape) == (o.colour, o.shape))
        return QA("existence", f"is there a {o.colour} {o.shape}?", "yes", scene.seed, ev)
    present = {(o.colour, o.shape) for o in scene.objects}
    cols = sorted({c for c, _ in present})  # sorted: set order varies with the process's hash seed
    shps = sorted({s for _, s in present})
    both = [(c, s) for c in cols for s in shps if (c, s) not in present]
    one = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present and (c in cols or s in shps)]
    pool = both if both and rng.random() < 0.75 else one
    c, s = _pick(rng, pool)
    return QA("existence", f"is there a {c} {s}?", "no", scene.seed)


def counting(scene: Scene, rng) -> QA | None:
    by_answer: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    objs = scene.objects
    for c in COLOURS:
        ev = tuple(i for i, o in enumerate(objs) if o.colour == c)
        by_answer.setdefault(len(ev), []).append((f"how many {c} objects are there?", ev))
    for s in SHAPES:
        ev = tuple(i for i, o in enumerate(objs) if o.shape == s)
        by_answer.setdefault(len(ev), []).append((f"how many {PLURAL[s]} are there?", ev))
    by_answer.setdefault(len(objs), []).append(("how many objects are there?", tuple(range(len(objs)))))
    feasible = sorted(k for k in by_answer if k <= 9)
    k = _pick(rng, feasible)
    q, ev = _pick(rng, by_answer[k])
    return QA("counting", q, str(k), scene.seed, ev)


def _in_direction(a, b, direction: str) -> bool:
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if direction == "left of":
        return dx < 0 and abs(dy) <= -dx
    if direction == "right of":
        return dx > 0 and abs(dy) <= dx
    if direction == "above":
        return dy < 0 and abs(dx) <= -dy
    return dy > 0 and abs(dx) <= dy


def _dist(a, b) -> float:
    return math.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1])


def _unique_nearest(anchor, others, margin=1.25):
    if not others:
        return None
    ds = sorted((_dist(anchor, o), i) for i, o in enumerate(others))
    if len(ds) > 1 and ds[1][0] < margin * ds[0][0]:
        return None
    return others[ds[0][1]]


def spatial(scene: Scene, rng) -> QA | None:
    objs = scene.objects
    cands = []
    for a in objs:
        rest = [o for o in objs if o is not a]
        for d in DIRECTIONS:
            t = _unique_nearest(a, [o for o in rest if _in_direction(a, o, d)])
            if t is not None:
                cands.append((d, a, t))
        t = _unique_nearest(a, rest)
        if t is not None:
            cands.append(("nearest", a, t))
    c = _pick(rng, cands)
    if c is None:
        return None
    d, a, t = c
    what = "colour" if rng.random() < 0.5 else "shape"
    ans = t.colour if what == "colour" else t.shape
    if d == "nearest":
        q = f"what {what} is the object nearest the {a.colour} {a.shape}?"
    else:
        q = f"what {what} is {d} the {a.colour} {a.shape}?"
    return QA("spatial", q, ans, scene.seed, (objs.index(t), objs.index(a)))


def small(scene: Scene, rng) -> QA | None:
    smalls = [o for o in scene.objects if o.size == "small"]
    cands = []
    for o in smalls:
        if sum(1 for p in smalls if p.shape == o.shape) == 1:
            cands.append(("colour", o))
        if sum(1 for p in smalls if p.colour == o.colour) == 1:
            cands.append(("shape", o))
    c = _pick(rng, cands)
    if c is None:
        return None
    what, o = c
    ev = (scene.objects.index(o),)
    if what == "colour":
        return QA("small", f"what colour is the small {o.shape}?", o.colour, scene.seed, ev)
    return QA("small", f"what shape is the small {o.colour} object?", o.shape, scene.seed, ev)


GENERATORS = {
    "attribute": attribute,
    "existence": existence,
    "counting": counting,
    "spatial": spatial,
    "small": small,
}


def ask(scene: Scene, family: str, rng) -> QA | None:
    """One question of ``family`` about ``scene`` (None if the scene cannot support it)."""
    return GENERATORS[family](scene, rng)


def questions_for_scene(
    scene: Scene, k: int, seed: int | None = None, families: tuple[str, ...] = FAMILIES
) -> list[QA]:
    """Up to ``k`` distinct questions about one scene, ``families`` round-robin in random order
    (training packs these into one multi-turn sequence). A family named twice is drawn about twice
    as often (while the scene still supports new questions of it): the training mix."""
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise ValueError(f"`families` must be a non-empty subset of {FAMILIES}, got {families}")
    rng = np.random.default_rng([scene.seed if seed is None else seed, 31337])
    out, seen = [], set()
    fams = list(families)
    dead: set[str] = set()
    tries = 0
    while len(out) < k and len(dead) < len(fams) and tries < 6 * k:
        rng.shuffle(fams)
        for f in fams:
            if f in dead or len(out) >= k:
                continue
            tries += 1
            qa = ask(scene, f, rng)
            if qa is None:
                dead.add(f)
            elif qa.question not in seen:
                seen.add(qa.question)
                out.append(qa)
    return out


def heldout_set(n: int, seed: int = 0, level: float = 1.0, size=(336, 336), families=FAMILIES):
    """``n`` held-out questions, exactly balanced over ``families`` (and yes/no within existence),
    one question per scene (``size``: (W, H) or a function of the scene seed). Returns ``[(scene_seed, QA)]``; render scenes with :func:`scene_for`."""
    per = [n // len(families) + (1 if i < n % len(families) else 0) for i in range(len(families))]
    out = []
    s = HELDOUT_BASE + seed * 1_000_003
    for fam, m in zip(families, per):
        got = 0
        while got < m:
            w, h = size(s) if callable(size) else size
            sc = make_scene(s, level=level, width=w, height=h)
            rng = np.random.default_rng([s, 4242])
            if fam == "existence":
                qa = existence(sc, rng, answer="yes" if got % 2 == 0 else "no")
            else:
                qa = ask(sc, fam, rng)
            s += 1
            if qa is not None:
                out.append((sc.seed, qa))
                got += 1
    return out


def scene_for(seed: int, level: float = 1.0, size=(336, 336)) -> Scene:
    return make_scene(seed, level=level, width=size[0], height=size[1])


def majority_baseline(items) -> dict[str, float]:
    """Accuracy of the best constant answer per family on ``items`` (list of QA or (seed, QA))."""
    from collections import Counter

    qas = [x[1] if isinstance(x, tuple) else x for x in items]
    out = {}
    for f in FAMILIES:
        a = [q.answer for q in qas if q.family == f]
        if a:
            out[f] = Counter(a).most_common(1)[0][1] / len(a)
    return out


def corpus() -> list[str]:
    """Every word the questions and answers use (for training the tokenizer)."""
    words = set(ANSWERS) | set(PLURAL.values())
    for q in (
        "what colour is the object nearest the",
        "what shape is left of the right of above below",
        "is there a how many objects are there small",
    ):
        words |= set(q.split())
    return sorted(words)
