"""lmms-eval (0.7.x) integration: any lmms-eval image task on a stock HF checkpoint with a vlmprune method.

    lmms-eval --model vlmprune_llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=promprune,budget=64 \\
        --tasks pope --batch_size 8
    lmms-eval --model vlmprune_qwen2_5_vl --model_args pretrained=DIR,method=visionzip,ratio=0.111 ...

Registration is through the entry-point group ``lmms_eval.models`` (pyproject.toml):

    [project.entry-points."lmms_eval.models"]
    vlmprune = "vlmprune.integrations.lmms_eval:manifests"

``method=none`` (the default) runs the unpruned model. Batches of any size are supported (left
padding; one image per request); ``loglikelihood`` is not implemented (generation tasks only).
Errors are raised, never turned into empty answers. Importing this module needs ``lmms_eval``; the
rest of vlmprune does not. lmms-eval depends on torchvision, whose PyPI build does not load against
the CPU torch of this project's environment: see docs/lmms-eval.md.
"""

from __future__ import annotations


def manifests():
    """Entry point payload for ``lmms_eval.models``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    here = __name__
    return [
        ModelManifest("vlmprune_llava_hf", simple_class_path=f"{here}.VlmpruneLlavaHF"),
        ModelManifest("vlmprune_qwen2_5_vl", simple_class_path=f"{here}.VlmpruneQwen2_5_VL"),
    ]


def _load(pretrained: str, dtype, device: str, attn: str | None):
    """(model, processor, family) for any supported checkpoint; family "llava" or "qwen"."""
    from vlmprune.adapters.loading import load_pretrained

    pre = load_pretrained(pretrained, dtype=dtype, device=device, attn=attn)
    pre.processor.tokenizer.padding_side = "left"
    family = "qwen" if pre.adapter.family.startswith("qwen") else "llava"
    return pre.model, pre.processor, family


class _Backend:
    """The model side of the lmms-eval wrapper; :func:`_build_classes` mixes it with lmms-eval's
    ``lmms`` base (imported only then)."""

    is_simple = True
    expected_family = None

    def _setup(self, pretrained, method="none", budget=None, ratio=None, device="cpu", dtype="float32",
               batch_size=1, attn_implementation=None, max_new_tokens=64, **method_kwargs):  # fmt: skip
        import torch

        import vlmprune

        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        self._model, self.processor, self.family = _load(pretrained, torch_dtype, device, attn_implementation)
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
        none = self.method_name in ("none", "full", "")
        self.method = None if none else vlmprune.get_method(self.method_name, **kw)
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

    def _answer(self, contexts, images, gen_kwargs) -> list[str]:
        """Greedy answers of one batch, cut at the task's ``until`` strings."""
        import torch

        g = dict(gen_kwargs)
        until = g.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        inputs = self.processor(
            text=[self._prompt(c) for c in contexts], images=images, return_tensors="pt", padding=True
        )
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
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        res = []
        for t in texts:
            for u in until:
                if u and u in t:
                    t = t.split(u)[0]
            res.append(t.strip())
        return res

    def generate_until(self, requests):
        from lmms_eval import utils
        from tqdm import tqdm

        res = []
        re_ords = utils.Collator([r.args for r in requests], lambda x: (-len(x[0]), x[0]), grouping=True)
        pbar = tqdm(total=len(requests), desc="vlmprune responding")
        for chunk in re_ords.get_batched(n=self.batch_size, batch_fn=None):
            contexts, gen_kwargs, doc_to_visual, doc_id, task, split = zip(*chunk)
            images = []
            for d2v, i in zip(doc_to_visual, doc_id):
                vis = d2v(self.task_dict[task[0]][split[0]][i])
                if len(vis) != 1:
                    raise ValueError(f"vlmprune plugin: one image per request is supported, got {len(vis)}")
                images.append(vis[0].convert("RGB"))
            res += self._answer(contexts, images, gen_kwargs[0])
            pbar.update(len(chunk))
        pbar.close()
        return re_ords.get_original(res)

    def loglikelihood(self, requests):
        raise NotImplementedError("vlmprune plugin: loglikelihood tasks are not supported (generation only)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vlmprune plugin: multi-round generation is not supported")


def _build_classes():
    from lmms_eval.api.model import lmms

    class _VlmpruneHF(_Backend, lmms):
        def __init__(self, pretrained: str, **kwargs):
            lmms.__init__(self)
            self._setup(pretrained, **kwargs)

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
