"""The testbed as a ``vlmprune eval`` task: held-out scenes, one-word answers, two checkpoints.

``vlmprune eval`` (default task ``testbed``) scores every method at 192/128/64/32 of 576 visual
tokens on testbed-llava, and on testbed-qwen at the same kept ratios when its checkpoint exists,
over a family-balanced held-out question set. The checkpoints are looked up in
``$VLMPRUNE_TESTBED``, ``./testbed`` and the source checkout's ``testbed/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vlmprune.apps.errors import UsageError
from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q


@dataclass
class Item:
    image: object
    question: str
    answer: str
    category: str


def first_word(text: str) -> str:
    """The answer of a generated text: its first word, lower case, without punctuation."""
    w = text.strip().split()
    return w[0].strip(".,!?").lower() if w else ""


def budget_kwargs(family: str, budget: int) -> dict:
    """A budget of 576 tokens as method arguments: testbed-llava keeps ``budget`` tokens,
    testbed-qwen (dynamic resolution) the same fraction of its tokens."""
    return {"budget": budget} if family == "llava" else {"ratio": budget / 576}


def scene_images(family: str, items) -> list:
    """The rendered scenes of held-out ``items`` ``[(scene seed, QA)]`` at the family's sizes."""
    from vlmprune.testbed.scenes import make_scene
    from vlmprune.testbed.train import scene_size

    return [
        make_scene(s, width=scene_size(family, s)[0], height=scene_size(family, s)[1]).image for s, _ in items
    ]


def testbed_dirs() -> list[Path]:
    """Where the committed checkpoints are looked for: $VLMPRUNE_TESTBED, ./testbed, the repo's testbed/."""
    roots = []
    if os.environ.get("VLMPRUNE_TESTBED"):
        roots.append(Path(os.environ["VLMPRUNE_TESTBED"]))
    roots.append(Path.cwd() / "testbed")
    roots.append(Path(__file__).resolve().parents[3] / "testbed")
    return roots


def find_testbed(family: str) -> Path | None:
    for r in testbed_dirs():
        d = r / family
        if (d / "config.json").exists() and (d / "model.safetensors").exists():
            return d
    return None


class TestbedTask:
    """The testbed's question set as a task of :mod:`vlmprune.apps.eval`."""

    name = "testbed"
    categories = Q.FAMILIES
    chance = Q.CHANCE
    full_tokens = 576
    budgets = (192, 128, 64, 32)
    samples = 300

    def models(self, spec: str | None):
        """``[(name, loader)]``; ``loader()`` -> (model, processor, family). ``spec``: None or
        ``testbed`` (testbed-llava, plus testbed-qwen if present), ``testbed-llava``,
        ``testbed-qwen``, a built-in random model of the tools (``tiny-llava``, ...: a smoke test
        of the pipeline), ``tiny`` / ``tiny-qwen`` (untrained testbed-sized models), or a testbed
        checkpoint directory."""
        from vlmprune.apps import zoo

        if spec in zoo.builtin_names():

            def load_builtin(spec=spec):
                from vlmprune.apps import models

                loaded = models.load(spec, device="cpu", dtype="float32")
                if loaded.family.startswith("qwen"):
                    return loaded.model, loaded.processor, "qwen"
                style = "llava" if loaded.adapter.image_token == "<image>" else loaded.family
                return loaded.model, loaded.processor, style  # other families: their own plain prompt

            return [(f"{spec} (random weights)", load_builtin)]
        if spec in ("tiny", "tiny-qwen"):
            fam = "llava" if spec == "tiny" else "qwen"

            def load_tiny(fam=fam):
                model, proc = M.build(fam, "tiny", seed=0)
                return model.eval(), proc, fam

            return [(f"{spec} (untrained)", load_tiny)]
        if spec in (None, "testbed", "testbed-llava", "testbed-qwen"):
            wanted = {"testbed-llava": ["llava"], "testbed-qwen": ["qwen"]}.get(spec, ["llava", "qwen"])
            found = [(f"testbed-{f}", find_testbed(f)) for f in wanted]
            out = [(n, lambda d=d: M.load_testbed(d)) for n, d in found if d is not None]
            if not out:
                raise UsageError(
                    "--model",
                    "no testbed checkpoint found under " + ", ".join(str(r) for r in testbed_dirs()),
                )
            return out
        path = Path(spec)
        if not (path / "config.json").exists():
            raise UsageError(
                "--model", f"{spec!r}: no config.json there (a testbed checkpoint directory expected)"
            )
        return [(path.name or str(path), lambda: M.load_testbed(path))]

    def items(self, family: str, n: int, seed: int) -> list[Item]:
        from vlmprune.testbed.train import scene_size

        held = Q.heldout_set(n, seed=seed, size=lambda s: scene_size(family, s))
        return [
            Item(img, qa.question, qa.answer, qa.family)
            for img, (_, qa) in zip(scene_images(family, held), held)
        ]

    def encode(self, family, processor, images, questions):
        return M.encode(family, processor, images, questions)

    def score(self, text: str, item: Item) -> bool:
        return first_word(text) == item.answer

    def budget_kwargs(self, family: str, budget: int, seed: int, method: str) -> dict:
        """A budget of 576 tokens as method arguments: testbed-llava keeps ``budget`` tokens,
        testbed-qwen (dynamic resolution) the same fraction of its tokens."""
        kw = budget_kwargs(family, budget)
        if method == "random":
            kw["seed"] = seed
        return kw

    def majority(self, items) -> dict:
        return Q.majority_baseline([Q.QA(it.category, it.question, it.answer) for it in items])
