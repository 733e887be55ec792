"""An offline lmms-eval task over held-out testbed questions (for the lmms-eval integration's tests)."""

from __future__ import annotations

from pathlib import Path

TASK_UTILS = '''"""lmms-eval task utilities for the vlmprune testbed (written by write_testbed_task)."""


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    pred = results[0].strip().split()
    pred = pred[0].strip(".,!?").lower() if pred else ""
    return {"exact_match": float(pred == doc["answer"])}
'''


def write_testbed_task(
    out_dir, n: int = 50, seed: int = 0, family: str = "llava", task: str = "vlmprune_testbed"
):
    """A local lmms-eval task over ``n`` held-out testbed questions: ``out_dir/data`` (``save_to_disk``),
    ``out_dir/<task>.yaml`` and ``out_dir/testbed_utils.py``; run with ``--include_path out_dir``."""
    import datasets

    from vlmprune.testbed import questions as Q
    from vlmprune.testbed.scenes import make_scene
    from vlmprune.testbed.train import scene_size

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = Q.heldout_set(n, seed=seed, size=lambda s: scene_size(family, s))
    rows = {"image": [], "question": [], "answer": [], "family": [], "seed": []}
    for s, qa in items:
        w, h = scene_size(family, s)
        rows["image"].append(make_scene(s, width=w, height=h).image)
        rows["question"].append(qa.question)
        rows["answer"].append(qa.answer)
        rows["family"].append(qa.family)
        rows["seed"].append(s)
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "family": datasets.Value("string"),
            "seed": datasets.Value("int64"),
        }
    )
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(
        str(out / "data")
    )
    (out / "testbed_utils.py").write_text(TASK_UTILS)
    (out / f"{task}.yaml").write_text(f"""dataset_path: {(out / "data").resolve()}
dataset_kwargs:
  load_from_disk: True
task: {task}
test_split: test
output_type: generate_until
doc_to_visual: !function testbed_utils.doc_to_visual
doc_to_text: !function testbed_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 2
  temperature: 0
  do_sample: false
process_results: !function testbed_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  - version: 0.1
""")
    return out
