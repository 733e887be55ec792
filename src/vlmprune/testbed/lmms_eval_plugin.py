"""lmms-eval (0.7.x) plugin: any lmms-eval image task on a stock HF checkpoint with a vlmprune method.

    lmms-eval --model vlmprune_llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=promprune,budget=64 \\
        --tasks pope --batch_size 8
    lmms-eval --model vlmprune_qwen2_5_vl --model_args pretrained=DIR,method=visionzip,ratio=0.111 ...

Registration is through the entry-point group ``lmms_eval.models``; the project's pyproject needs

    [project.entry-points."lmms_eval.models"]
    vlmprune = "vlmprune.testbed.lmms_eval_plugin:manifests"

``method=none`` (the default) runs the unpruned model. Batches of any size are supported (left
padding; one image per request); ``loglikelihood`` is not implemented (generation tasks only).
Errors are raised, never turned into empty answers. Importing this module needs ``lmms_eval``; the
rest of vlmprune does not. lmms-eval depends on torchvision, whose PyPI build does not load against
the CPU torch of this project's environment: see docs/testbed.md ("lmms-eval").
:func:`write_testbed_task` writes a local lmms-eval task (``save_to_disk`` dataset + YAML) from the
testbed's held-out questions for offline tests.
"""

from __future__ import annotations

from pathlib import Path


def manifests():
    """Entry point payload for ``lmms_eval.models``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    here = __name__
    return [
        ModelManifest("vlmprune_llava_hf", simple_class_path=f"{here}.VlmpruneLlavaHF"),
        ModelManifest("vlmprune_qwen2_5_vl", simple_class_path=f"{here}.VlmpruneQwen2_5_VL"),
    ]


def _load(pretrained: str, dtype, device: str, attn: str | None):
    """(model, processor, family) for llava / llava_next / qwen2_5_vl / qwen2_vl checkpoints."""
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(pretrained)
    classes = {
        "llava": "LlavaForConditionalGeneration",
        "llava_next": "LlavaNextForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
    }
    if cfg.model_type not in classes:
        from vlmprune.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{pretrained}: model_type {cfg.model_type!r}; supported: {sorted(classes)}"
        )
    kw = {"dtype": dtype}
    if attn:
        kw["attn_implementation"] = attn
    model = getattr(transformers, classes[cfg.model_type]).from_pretrained(pretrained, **kw).to(device).eval()
    family = "qwen" if cfg.model_type.startswith("qwen") else "llava"
    try:
        from transformers import AutoProcessor

        proc = AutoProcessor.from_pretrained(pretrained)
        if not callable(getattr(proc, "apply_chat_template", None)) or not hasattr(proc, "tokenizer"):
            raise TypeError("not a multimodal processor")
    except Exception:  # a testbed-qwen directory: image processor + tokenizer only
        from vlmprune.testbed.model import load_testbed

        _, proc, _ = load_testbed(pretrained)
    proc.tokenizer.padding_side = "left"
    return model, proc, family


def _build_classes():
    import torch
    from lmms_eval import utils
    from lmms_eval.api.model import lmms
    from tqdm import tqdm

    import vlmprune

    class _VlmpruneHF(lmms):
        is_simple = True
        expected_family = None

        def __init__(
            self,
            pretrained: str,
            method: str = "none",
            budget=None,
            ratio=None,
            device: str = "cpu",
            dtype: str = "float32",
            batch_size=1,
            attn_implementation=None,
            max_new_tokens: int = 64,
            **method_kwargs,
        ):
            super().__init__()
            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
            self._model, self.processor, self.family = _load(
                pretrained, torch_dtype, device, attn_implementation
            )
            if self.expected_family and self.family != self.expected_family:
                raise ValueError(f"{pretrained} is a {self.family} checkpoint, not {self.expected_family}")
            self._device = torch.device(device)
            self.batch_size_per_gpu = int(batch_size)
            self.max_new_tokens = int(max_new_tokens)
            self.method_name = str(method)
            kw = {k: _num(v) for k, v in method_kwargs.items()}
            if budget is not None:
                kw["budget"] = int(budget)
            if ratio is not None:
                kw["ratio"] = float(ratio)
            self.method = (
                None
                if self.method_name in ("none", "full", "")
                else vlmprune.get_method(self.method_name, **kw)
            )
            self._rank, self._world_size = 0, 1

        @property
        def model(self):
            return self._model

        @property
        def tokenizer(self):
            return self.processor.tokenizer

        @property
        def batch_size(self):
            return self.batch_size_per_gpu

        @property
        def device(self):
            return self._device

        @property
        def rank(self):
            return self._rank

        @property
        def world_size(self):
            return self._world_size

        def _prompt(self, text: str) -> str:
            text = text.replace("<image>", "").strip()
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            tmpl = getattr(self.processor, "apply_chat_template", None)
            if tmpl is not None and getattr(self.processor, "chat_template", None):
                return tmpl(msgs, tokenize=False, add_generation_prompt=True)
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

        def _encode(self, prompts, images):
            if self.family == "llava":
                return self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
            return self.processor(text=prompts, images=images, return_tensors="pt", padding=True)

        def generate_until(self, requests):
            res = []
            re_ords = utils.Collator([r.args for r in requests], lambda x: (-len(x[0]), x[0]), grouping=True)
            chunks = re_ords.get_batched(n=self.batch_size, batch_fn=None)
            pbar = tqdm(total=len(requests), desc="vlmprune responding")
            for chunk in chunks:
                contexts, gen_kwargs, doc_to_visual, doc_id, task, split = zip(*chunk)
                images = []
                for d2v, i in zip(doc_to_visual, doc_id):
                    vis = d2v(self.task_dict[task[0]][split[0]][i])
                    if len(vis) != 1:
                        raise ValueError(
                            f"vlmprune plugin: one image per request is supported, got {len(vis)}"
                        )
                    images.append(vis[0].convert("RGB"))
                g = dict(gen_kwargs[0])
                until = g.pop("until", None)
                until = [until] if isinstance(until, str) else list(until or [])
                inputs = self._encode([self._prompt(c) for c in contexts], images)
                inputs = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
                n_new = int(g.get("max_new_tokens", self.max_new_tokens))
                with torch.no_grad():
                    if self.method is None:
                        out = self.model.generate(**inputs, max_new_tokens=n_new, do_sample=False)
                    else:
                        with self.method(self.model):
                            out = self.model.generate(**inputs, max_new_tokens=n_new, do_sample=False)
                texts = self.tokenizer.batch_decode(
                    out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                for t in texts:
                    for u in until:
                        if u and u in t:
                            t = t.split(u)[0]
                    res.append(t.strip())
                pbar.update(len(chunk))
            pbar.close()
            return re_ords.get_original(res)

        def loglikelihood(self, requests):
            raise NotImplementedError(
                "vlmprune plugin: loglikelihood tasks are not supported (generation only)"
            )

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("vlmprune plugin: multi-round generation is not supported")

    class VlmpruneLlavaHF(_VlmpruneHF):
        """LLaVA-1.5 / LLaVA-NeXT checkpoints (``LlavaForConditionalGeneration`` & co.) with pruning."""

        expected_family = "llava"

    class VlmpruneQwen2_5_VL(_VlmpruneHF):
        """Qwen2.5-VL / Qwen2-VL checkpoints with pruning."""

        expected_family = "qwen"

    return VlmpruneLlavaHF, VlmpruneQwen2_5_VL


def _num(v):
    if isinstance(v, str):
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
    return v


def __getattr__(name):  # the classes need lmms_eval: build them on first access only
    if name in ("VlmpruneLlavaHF", "VlmpruneQwen2_5_VL"):
        llava, qwen = _build_classes()
        globals().update(VlmpruneLlavaHF=llava, VlmpruneQwen2_5_VL=qwen)
        return globals()[name]
    raise AttributeError(name)


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
