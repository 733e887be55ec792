"""The offline testbed: scene generator, question families, model round-trips, `vlmprune eval`."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from functools import lru_cache

import numpy as np
import pytest
import torch

from vlmprune.adapters import families
from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import COLOURS, SHAPES, make_scene


@lru_cache(maxsize=2)
def tiny(family):
    return M.build(family, "tiny", seed=0)


# ------------------------------------------------------------------------------------------- scenes
def test_scene_is_deterministic():
    a, b = make_scene(123), make_scene(123)
    assert a.describe() == b.describe()
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.patch_object, b.patch_object)
    c = make_scene(124)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    assert a.image.size == (336, 336) and a.grid == (24, 24)


@pytest.mark.parametrize("seed", range(12))
def test_scene_labels_consistent(seed):
    sc = make_scene(seed, level=seed / 11)
    assert 1 <= len(sc.objects) <= 15
    assert len({(o.colour, o.shape) for o in sc.objects}) == len(sc.objects)  # names are unique
    for o in sc.objects:
        assert o.area > 0
        x0, y0, x1, y1 = o.bbox
        assert 0 <= x0 < x1 <= 336 and 0 <= y0 < y1 <= 336
        assert x0 <= o.centre[0] <= x1 and y0 <= o.centre[1] <= y1
    fg = sc.patch_object >= 0
    assert ((sc.patch_colour > 0) == fg).all() and ((sc.patch_shape > 0) == fg).all()
    for idx in np.unique(sc.patch_object[fg]):
        o = sc.objects[idx]
        assert (sc.patch_colour[sc.patch_object == idx] == COLOURS.index(o.colour) + 1).all()
        assert (sc.patch_shape[sc.patch_object == idx] == SHAPES.index(o.shape) + 1).all()
    big = [o for o in sc.objects if o.size != "small"]
    labelled = set(np.unique(sc.patch_object[fg]).tolist())
    assert all(sc.objects.index(o) in labelled for o in big)  # every medium/large object owns patches
    assert sc.patch_centre.sum() == len(sc.objects) or sc.patch_centre.sum() <= len(sc.objects)
    # an object's pixels have (about) its colour or its pattern's second tone, nothing else
    img = np.asarray(sc.image).astype(int)
    from vlmprune.testbed.scenes import RGB, second_tone

    for i, o in enumerate(sc.objects):
        px = img[sc.object_map == i + 1]
        base = np.array(RGB[o.colour])
        d1 = np.abs(px - base).max(-1)
        d2 = np.abs(px - second_tone(base)).max(-1)
        assert (np.minimum(d1, d2) <= 14).all(), o
        if o.shape == "circle":
            assert (d1 <= 14).all()  # circles are solid
        elif o.area >= 200:
            assert (d1 <= 14).mean() > 0.25 and (d2 <= 14).mean() > 0.25  # both tones present


def test_non_square_scene():
    sc = make_scene(5, width=392, height=224)
    assert sc.image.size == (392, 224) and sc.grid == (16, 28)
    with pytest.raises(ValueError, match="width"):
        make_scene(5, width=300)


# ------------------------------------------------------------------------------------------- questions
def _check_answer(sc, qa):
    """Re-derive the answer of a question from the scene description alone."""
    q = qa.question
    if qa.family == "existence":
        c, s = re.match(r"is there a (\w+) (\w+)\?", q).groups()
        assert qa.answer == ("yes" if sc.count(colour=c, shape=s) else "no")
        if qa.answer == "no":  # adversarial: shares its colour or its shape with a present object
            assert sc.count(colour=c) or sc.count(shape=s)
    elif qa.family == "counting":
        m = re.match(r"how many (\w+) objects are there\?", q)
        if m:
            assert int(qa.answer) == sc.count(colour=m.group(1))
        elif q == "how many objects are there?":
            assert int(qa.answer) == len(sc.objects)
        else:
            plural = re.match(r"how many (\w+) are there\?", q).group(1)
            shape = {v: k for k, v in Q.PLURAL.items()}[plural]
            assert int(qa.answer) == sc.count(shape=shape)
    elif qa.family == "attribute":
        m = re.match(r"what colour is the (\w+)\?", q)
        if m:
            (o,) = [o for o in sc.objects if o.shape == m.group(1)]
            assert qa.answer == o.colour
        else:
            c = re.match(r"what shape is the (\w+) object\?", q).group(1)
            (o,) = [o for o in sc.objects if o.colour == c]
            assert qa.answer == o.shape
    elif qa.family == "small":
        m = re.match(r"what colour is the small (\w+)\?", q)
        smalls = [o for o in sc.objects if o.size == "small"]
        if m:
            (o,) = [o for o in smalls if o.shape == m.group(1)]
            assert qa.answer == o.colour
        else:
            (o,) = [
                o
                for o in smalls
                if o.colour == re.match(r"what shape is the small (\w+) object\?", q).group(1)
            ]
            assert qa.answer == o.shape
    elif qa.family == "spatial":
        what, rel, c, s = re.match(
            r"what (colour|shape) is (?:the object )?(left of|right of|above|below|nearest) "
            r"the (\w+) (\w+)\?",
            q,
        ).groups()
        (a,) = [o for o in sc.objects if o.colour == c and o.shape == s]
        rest = [o for o in sc.objects if o is not a]
        if rel != "nearest":
            rest = [o for o in rest if Q._in_direction(a, o, rel)]
        t = min(rest, key=lambda o: Q._dist(a, o))
        assert qa.answer == (t.colour if what == "colour" else t.shape)
    assert qa.answer in Q.ANSWERS


@pytest.mark.parametrize("seed", range(10))
def test_answers_match_scene(seed):
    sc = make_scene(seed, level=seed / 9)
    qs = Q.questions_for_scene(sc, 20)
    assert len({q.question for q in qs}) == len(qs)
    for qa in qs:
        _check_answer(sc, qa)


def test_repeating_a_family_weights_it():
    """``--families`` naming counting and spatial twice draws them more often (as far as each scene
    supports new distinct questions), and never a family that is not named."""
    weighted_fams = ("attribute", "existence", "counting", "counting", "spatial", "spatial", "small")
    plain, weighted = Counter(), Counter()
    for seed in range(40):
        sc = make_scene(seed, level=1.0)
        plain.update(qa.family for qa in Q.questions_for_scene(sc, 20))
        weighted.update(qa.family for qa in Q.questions_for_scene(sc, 20, families=weighted_fams))
    share = lambda c, f: c[f] / sum(c.values())  # noqa: E731
    for f in ("counting", "spatial"):
        assert share(weighted, f) > 1.15 * share(plain, f), (plain, weighted)
    for f in ("attribute", "small"):
        assert 0 < share(weighted, f) < share(plain, f), (plain, weighted)
    only = Counter(qa.family for qa in Q.questions_for_scene(make_scene(3), 20, families=("counting",) * 2))
    assert set(only) == {"counting"}


def test_heldout_balanced_and_split():
    items = Q.heldout_set(30, seed=0)
    fams = Counter(qa.family for _, qa in items)
    assert set(fams.values()) == {6} and set(fams) == set(Q.FAMILIES)
    yn = Counter(qa.answer for _, qa in items if qa.family == "existence")
    assert yn["yes"] == yn["no"] == 3
    assert all(s >= Q.HELDOUT_BASE for s, _ in items)  # training seeds are < HELDOUT_BASE
    for s, qa in items:
        _check_answer(Q.scene_for(s), qa)
    assert Q.heldout_set(30, seed=0) == items  # deterministic
    maj = Q.majority_baseline(items)
    assert maj["existence"] == 0.5


# ------------------------------------------------------------------------------------------- models
def test_llava_round_trip_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    model, proc = tiny("llava")
    assert model.config.vision_feature_layer == -2
    M.save(model, proc, tmp_path, dtype=torch.float32)
    m2 = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    p2 = LlavaProcessor.from_pretrained(tmp_path)
    sc = make_scene(3)
    enc = M.encode("llava", p2, [sc.image], ["is there a red star?"])
    assert (enc["input_ids"] == model.config.image_token_id).sum() == 576
    with torch.no_grad():
        a = model(**M.encode("llava", proc, [sc.image], ["is there a red star?"])).logits
        b = m2(**enc).logits
    torch.testing.assert_close(a, b)
    # the chat template renders the prompt format training uses
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is there a red star?"}]},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "how many stars are there?"},
    ]
    assert p2.apply_chat_template(msgs, tokenize=False) == (
        M.turn_text("llava", "is there a red star?", True)
        + M.answer_text("llava", "yes")
        + "</s>"
        + M.turn_text("llava", "how many stars are there?", False)
    )
    ids = M.answer_token_ids(p2.tokenizer, "llava")
    assert len(set(ids.values())) == len(Q.ANSWERS)


def test_qwen_round_trip_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, proc = tiny("qwen")
    M.save(model, proc, tmp_path, dtype=torch.float32)
    m2, p2, fam = M.load_testbed(tmp_path)
    assert fam == "qwen" and type(m2).__name__ == "Qwen2_5_VLForConditionalGeneration"
    sc = make_scene(3, width=392, height=252)
    enc = M.encode("qwen", p2, [sc.image], ["is there a red star?"])
    assert enc["image_grid_thw"].tolist() == [[1, 18, 28]]
    with torch.no_grad():
        a = model(**M.encode("qwen", proc, [sc.image], ["is there a red star?"])).logits
        b = m2(**enc).logits
    torch.testing.assert_close(a, b)


def test_training_batch_matches_processor():
    """Training builds token ids segment by segment; the first turn must equal what the stock
    processor produces for the same prompt (so training and evaluation see the same tokens)."""
    from vlmprune.testbed.train import make_batch, scene_labels

    model, proc = tiny("llava")
    eos = proc.tokenizer.convert_tokens_to_ids("</s>")
    scenes, inputs, (rows, cols, tgt), _ = make_batch(
        "llava", proc, [7], 1.0, 3, eos, model.config.image_token_id
    )
    qa = Q.questions_for_scene(scenes[0], 3)[0]
    enc = M.encode("llava", proc, [scenes[0].image], [qa.question])
    n = enc["input_ids"].shape[1]
    assert inputs["input_ids"][0, :n].tolist() == enc["input_ids"][0].tolist()
    assert tgt[0].item() == M.answer_token_ids(proc.tokenizer, "llava")[qa.answer]
    assert cols[0].item() == n - 1
    torch.testing.assert_close(inputs["pixel_values"], enc["pixel_values"])
    lab = scene_labels(scenes[0])
    assert lab["colour"].shape == (576,) and lab["counts"][-1] == len(scenes[0].objects)


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_isolated_packing_equals_single_question_runs(family):
    """Isolated packing: every packed question's answer logits equal those of the stock model run on
    that question alone (the processor's prompt + answer), so no question sees another's answer and
    training sees exactly what evaluation sees; multi-turn packing does not have this property."""
    from vlmprune.testbed.train import AttentionProbe, additive, make_batch

    model, proc = tiny(family)
    model.eval()
    tok = proc.tokenizer
    eos = tok.convert_tokens_to_ids(M.eos_token(family))
    seeds = [21, 22]
    k = 4
    scenes, inputs, (rows, cols, tgt), qlist = make_batch(
        family, proc, seeds, 1.0, k, eos, model.config.image_token_id, model=model
    )
    assert inputs["attention_mask"].shape[:2] == (2, 1) and inputs["attention_mask"].dtype == torch.bool
    with torch.no_grad():
        packed = model(**inputs).logits[rows, cols]  # (n targets, V)
    i = 0
    for sc in scenes:
        for qa in Q.questions_for_scene(sc, k):
            enc = M.encode(family, proc, [sc.image], [qa.question])
            a = tok(M.answer_text(family, qa.answer), add_special_tokens=False)["input_ids"] + [eos]
            n = enc["input_ids"].shape[1]
            enc["input_ids"] = torch.cat([enc["input_ids"], torch.tensor([a])], 1)
            enc["attention_mask"] = torch.ones_like(enc["input_ids"])
            if "mm_token_type_ids" in enc:
                enc["mm_token_type_ids"] = (enc["input_ids"] == model.config.image_token_id).to(torch.int32)
            with torch.no_grad():
                single = model(**enc).logits[0, n - 1 : n - 1 + len(a)]
            assert tgt[i : i + len(a)].tolist() == a
            assert qlist[i // len(a)][2] == qa and qlist[i // len(a)][1] == cols[i]
            torch.testing.assert_close(packed[i : i + len(a)], single, atol=1e-4, rtol=1e-4)
            i += len(a)
    assert i == len(tgt)
    # eager attention (used by the evidence-attention loss) needs the additive form of the mask
    # and the probe's recomputed attention of the last layer's head 1 equals eager attention's
    model.set_attn_implementation({"text_config": "eager"})
    eager_inputs = dict(inputs, attention_mask=additive(inputs["attention_mask"]))
    probe = AttentionProbe(model, layer=-1, head=1)
    inner = AttentionProbe(model, layer=0, head=0)  # an inner layer (the committed LLaVA supervises layer 1)
    try:
        with torch.no_grad():
            out = model(**eager_inputs, output_attentions=True)
            mine = probe.probs(inputs["attention_mask"])
            first = inner.probs(inputs["attention_mask"])
    finally:
        probe.remove()
        inner.remove()
    torch.testing.assert_close(out.logits[rows, cols], packed, atol=1e-4, rtol=1e-4)
    real = inputs["input_ids"] != tok.pad_token_id  # (B, L): padding rows differ (they see only themselves)
    torch.testing.assert_close(mine[real], out.attentions[-1][:, 1][real], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first[real], out.attentions[0][:, 0][real], atol=1e-5, rtol=1e-4)
    probe = AttentionProbe(model, layer=-1, head=0)
    try:  # training runs under bf16 autocast: the probe still returns fp32 probabilities
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(**eager_inputs)
            p16 = probe.probs(inputs["attention_mask"])
    finally:
        probe.remove()
    assert p16.dtype == torch.float32 and torch.allclose(p16.sum(-1), torch.ones(()), atol=1e-4)
    model.set_attn_implementation({"text_config": "sdpa"})
    _, chat, (r2, c2, _), _ = make_batch(
        family, proc, seeds, 1.0, k, eos, model.config.image_token_id, packing="multiturn", model=model
    )
    with torch.no_grad():
        multi = model(**chat).logits[r2, c2]
    assert not torch.allclose(multi, packed, atol=1e-3)  # later turns differ: they see earlier answers
    with pytest.raises(ValueError, match="packing"):
        make_batch(family, proc, seeds, 1.0, k, eos, model.config.image_token_id, packing="chat", model=model)


def test_evidence_of_questions_and_attention_loss():
    """Each question's evidence objects are the ones its answer is computed from; the evidence mask
    covers exactly the patches touching them; the loss is -log of the attention mass on them."""
    from vlmprune.testbed.train import evidence_attention_loss, evidence_mask

    for s in range(30):
        sc = make_scene(s, level=0.8)
        for qa in Q.questions_for_scene(sc, 12):
            objs = [sc.objects[i] for i in qa.evidence]
            if qa.family in ("attribute", "small"):
                (o,) = objs
                assert qa.answer in (o.colour, o.shape) and qa.question.rstrip("?").split()[-1] in (
                    o.shape,
                    "object",
                )
            elif qa.family == "counting":
                assert len(objs) == int(qa.answer)
            elif qa.family == "existence":
                assert bool(objs) == (qa.answer == "yes")
                assert all(f"{o.colour} {o.shape}" in qa.question for o in objs)
            else:
                t, a = objs
                assert qa.answer in (t.colour, t.shape) and f"{a.colour} {a.shape}" in qa.question
    sc = make_scene(5, level=0.0)
    qa = Q.QA("attribute", "q", sc.objects[0].colour, sc.seed, (0,))
    ev = evidence_mask(sc, qa)  # (576,)
    x0, y0, x1, y1 = sc.objects[0].bbox
    grid = ev.reshape(24, 24)
    assert grid.sum() > 0 and grid[y0 // 14, x0 // 14 :].sum() + grid[(y1 - 1) // 14].sum() > 0
    ys, xs = grid.nonzero(as_tuple=True)
    assert ys.min() * 14 <= y0 + 14 and (ys.max() + 1) * 14 >= y1 - 14 and xs.min() * 14 <= x0 + 14
    assert evidence_mask(sc, qa, merged=True).shape == (144,)
    L = 600
    att = torch.zeros(1, 2, L, L)
    img = torch.zeros(1, L, dtype=torch.bool)
    img[0, 10:586] = True
    att[0, 0, 590, 10:586] = ev / ev.sum() * 0.5  # half the mass on the evidence
    att[0, 0, 590, 0] = 0.5
    loss, mass = evidence_attention_loss(att[:, 0], img, [(0, 590, qa)], [sc], merged=False)
    assert abs(mass - 0.5) < 1e-5 and abs(loss.item() + math.log(0.5)) < 1e-4
    no = Q.QA("existence", "q", "no", sc.seed)
    loss, mass = evidence_attention_loss(att[:, 0], img, [(0, 590, no)], [sc], merged=False)
    assert loss.item() == 0.0 and mass != mass  # no evidence: nothing to supervise
    # the spatial second hop: only the target (evidence[0]) counts, and only for spatial questions
    sc = next(s for s in (make_scene(i, level=0.6) for i in range(50)) if len(s.objects) >= 2)
    rel = Q.QA("spatial", "q", sc.objects[0].colour, sc.seed, (0, 1))
    target, anchor = (evidence_mask(sc, rel, objects=(i,)) for i in (0, 1))
    att = torch.zeros(1, L, L)
    att[0, 590, 10:586] = 0.7 * anchor / anchor.sum()  # the anchor (first hop) is not the target
    att[0, 590, 10:586] += 0.2 * target / target.sum()
    att[0, 590, 0] = 1 - att[0, 590].sum()
    both = ((target + anchor) > 0).float()
    _, mass = evidence_attention_loss(att, img, [(0, 590, rel)], [sc], merged=False)
    assert abs(mass - att[0, 590, 10:586] @ both) < 1e-5
    loss, mass = evidence_attention_loss(att, img, [(0, 590, rel)], [sc], merged=False, target_only=True)
    assert abs(mass - att[0, 590, 10:586] @ target) < 1e-5 and mass < 0.5
    assert abs(loss.item() + math.log(mass)) < 1e-4
    _, mass = evidence_attention_loss(att, img, [(0, 590, qa)], [sc], merged=False, target_only=True)
    assert mass != mass  # not a relation: no second hop to supervise


def test_cooldown_schedule():
    from vlmprune.testbed.train import cooldown

    assert cooldown(5, 40, 0) == 1.0 and cooldown(39, 40, 0) == 1.0
    assert cooldown(10, 40, 20) == 1.0 and cooldown(20, 40, 20) == 1.0
    assert cooldown(30, 40, 20) == pytest.approx(0.5) and cooldown(39, 40, 20) == pytest.approx(0.1)
    assert cooldown(45, 40, 20) == 0.1


def test_train_resume(tmp_path):
    from vlmprune.testbed.train import cli

    args = [
        "--size",
        "tiny",
        "--out",
        str(tmp_path),
        "--batch",
        "2",
        "--questions",
        "4",
        "--vision-steps",
        "2",
        "--freeze-steps",
        "1",
        "--eval-n",
        "5",
        "--minutes",
        "5",
    ]
    assert cli(args + ["--max-steps", "3"]) == 0
    vocab = M.load_processor(tmp_path)[0].tokenizer.get_vocab()
    assert cli(args + ["--max-steps", "4", "--resume"]) == 0
    assert M.load_processor(tmp_path)[0].tokenizer.get_vocab() == vocab  # the run keeps its tokenizer
    state = json.loads((tmp_path / "resume" / "state.json").read_text())
    assert state["step"] == 4
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "eval" and "counting" in r for r in log)
    m2, _, fam = M.load_testbed(tmp_path)
    assert fam == "llava"


def test_position_objective(tmp_path, capsys):
    """The position labels are each token's grid cell centre; the head's loss is the weighted MSE
    and absent at weight 0; a run saved before the head existed resumes with it, keeping its
    optimizer state, and resumes again from its own state."""
    from safetensors.torch import load_file, save_file

    from vlmprune.testbed.train import AuxHeads, cli, scene_labels

    sc = make_scene(3, level=0.5)
    pos = scene_labels(sc)["pos"]  # (576, 2)
    assert pos.shape == (576, 2)
    assert torch.allclose(pos[0], torch.tensor([0.5 / 24, 0.5 / 24]))
    assert torch.allclose(pos[24 * 2 + 5], torch.tensor([2.5 / 24, 5.5 / 24]))  # row 2, column 5
    qs = make_scene(3, level=0.5, width=280, height=224)
    qlab = scene_labels(qs, merged=True)  # merged 28-px grid: 8 rows x 10 columns
    assert qlab["pos"].shape == (80, 2) and torch.allclose(qlab["pos"][10], torch.tensor([1.5 / 8, 0.5 / 10]))
    tokens = torch.randn(576, 32)
    assert "position" not in AuxHeads(32).losses(tokens, [], [scene_labels(sc)])[0]
    heads = AuxHeads(32, position_weight=2.0)
    out, accs = heads.losses(tokens, [], [scene_labels(sc)])
    want = 2.0 * torch.nn.functional.mse_loss(heads.position(heads.norm(tokens)), pos)
    assert torch.allclose(out["position"], want) and accs["pos_err"] > 0
    # --position-object-share: the object patches' share of the loss, whatever their number
    fg = scene_labels(sc)["colour"] > 0
    assert 0 < fg.sum() < 200
    shared = AuxHeads(32, position_weight=2.0, object_share=0.75)
    err = (shared.position(shared.norm(tokens)) - pos).pow(2).mean(-1)  # (576,)
    out, accs = shared.losses(tokens, [], [scene_labels(sc)])
    assert torch.allclose(out["position"], 2.0 * (0.75 * err[fg].mean() + 0.25 * err[~fg].mean()))
    assert accs["pos_err_obj"] > 0
    with pytest.raises(ValueError, match="object_share"):
        AuxHeads(32, position_weight=1.0, object_share=1.0)
    with pytest.raises(ValueError, match="--position-object-share"):
        cli(["--size", "tiny", "--out", str(tmp_path), "--position-object-share", "1"])

    args = ["--size", "tiny", "--out", str(tmp_path), "--batch", "2", "--questions", "4"]
    args += ["--vision-steps", "2", "--freeze-steps", "1", "--eval-n", "5", "--minutes", "5"]
    assert cli(args + ["--max-steps", "3"]) == 0
    # make the saved state one from before the position head: no head weights, three optimizer groups
    res = tmp_path / "resume"
    saved = load_file(str(res / "heads.safetensors"))
    save_file(
        {k: v for k, v in saved.items() if not k.startswith("position.")}, str(res / "heads.safetensors")
    )
    opt = torch.load(res / "optim.pt", weights_only=False)
    assert [g["name"] for g in opt["param_groups"]] == ["vision", "heads", "llm", "position"]
    dropped = opt["param_groups"].pop()["params"]
    opt["state"] = {k: v for k, v in opt["state"].items() if k not in dropped}
    torch.save(opt, res / "optim.pt")
    capsys.readouterr()
    assert cli(args + ["--max-steps", "5", "--resume", "--position-weight", "1"]) == 0
    w5 = load_file(str(res / "heads.safetensors"))["position.weight"]
    assert cli(args + ["--max-steps", "6", "--resume", "--position-weight", "1"]) == 0
    assert not torch.equal(load_file(str(res / "heads.safetensors"))["position.weight"], w5)  # it learns
    printed = capsys.readouterr().out
    assert (
        "fresh optimizer" not in printed
        and "aux heads without saved state (new): ['position.weight'" in printed
    )
    assert printed.count("aux heads without saved state") == 1  # the second resume has the head's state


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_word_alignment_targets_and_loss(family):
    """Each object token's alignment targets are its object's colour and shape answer tokens, the
    background is ignored, the visual tokens the hook captures are the ones the LLM reads, and the
    loss reaches the projector (LLaVA) / merger (Qwen) through the tied LM head."""
    from vlmprune.testbed.train import ProjectorCapture, align_loss, make_batch, scene_labels, word_targets

    model, proc = tiny(family)
    tok = proc.tokenizer
    ids = M.answer_token_ids(tok, family)
    scenes, inputs, _, _ = make_batch(
        family,
        proc,
        [11, 12],
        0.5,
        3,
        tok.convert_tokens_to_ids(M.eos_token(family)),
        model.config.image_token_id,
        model=model,
    )
    labels = [scene_labels(sc, merged=family == "qwen") for sc in scenes]
    col, shp = word_targets(labels, ids)
    c = torch.cat([x["colour"] for x in labels])
    s = torch.cat([x["shape"] for x in labels])
    assert ((col == -100) == (c == 0)).all() and ((shp == -100) == (s == 0)).all()
    k = int((c > 0).nonzero()[0])
    assert col[k] == ids[COLOURS[c[k] - 1]] and shp[k] == ids[SHAPES[s[k] - 1]]
    cap = ProjectorCapture(family, model)
    try:
        model.zero_grad()
        model(**inputs)
        n_visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
        assert (
            cap.out.shape == (n_visual, model.config.text_config.hidden_size) == (len(col), cap.out.shape[1])
        )
        loss, hit = align_loss(model, cap.out, (col, shp))
        loss.backward()
    finally:
        cap.remove()
    assert torch.isfinite(loss) and 0.0 <= hit <= 1.0
    proj = model.model.multi_modal_projector if family == "llava" else model.model.visual.merger
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())


# ------------------------------------------------------------------------------------------- eval
def test_eval_end_to_end(tmp_path):
    from vlmprune.apps.cli import entry

    rc = entry(
        [
            "eval",
            "--model",
            "tiny",
            "--methods",
            "random,pool",
            "--budgets",
            "64,32",
            "--samples",
            "5",
            "--batch",
            "5",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    rows = res["rows"]
    need = {"model", "method", "budget", "family", "accuracy", "full_accuracy", "n"}
    assert rows and all(need <= set(r) for r in rows)
    assert {(r["method"], r["budget"]) for r in rows} == {
        ("full", 576),
        ("random", 64),
        ("random", 32),
        ("pool", 64),
        ("pool", 32),
    }
    assert {r["family"] for r in rows} == set(Q.FAMILIES) | {"overall"}
    assert sum(r["n"] for r in rows if r["method"] == "full" and r["family"] != "overall") == 5
    assert all(r["mean_tokens_kept"] == r["budget"] for r in rows if r["method"] != "full")
    with open(tmp_path / "eval.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and need <= set(got[0])
    assert (tmp_path / "eval.png").stat().st_size > 1000


def test_eval_without_checkpoint(tmp_path, monkeypatch, capsys):
    from vlmprune.apps.cli import entry
    from vlmprune.testbed import task

    monkeypatch.setattr(task, "testbed_dirs", lambda: [tmp_path])
    assert entry(["eval", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--model: no testbed checkpoint" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- lmms-eval
def test_lmms_eval_plugin(tmp_path):
    """The real lmms-eval CLI on a tiny testbed model with a method applied (batch 2). Skipped where
    lmms-eval cannot be imported (it needs torchvision: docs/testbed.md) or the entry point of
    vlmprune's pyproject is not installed."""
    pytest.importorskip("lmms_eval")
    import os
    import subprocess
    import sys
    from importlib.metadata import entry_points

    if not any(ep.value.startswith("vlmprune.") for ep in entry_points(group="lmms_eval.models")):
        pytest.skip("vlmprune's lmms_eval.models entry point is not installed")
    from vlmprune.testbed.lmms_task import write_testbed_task

    model, proc = tiny("llava")
    M.save(model, proc, tmp_path / "model", dtype=torch.float32)
    write_testbed_task(tmp_path / "task", n=4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "lmms_eval",
        "eval",
        "--model",
        "vlmprune_llava_hf",
        "--model_args",
        f"pretrained={tmp_path / 'model'},method=random,budget=32",
        "--tasks",
        "vlmprune_testbed",
        "--include_path",
        str(tmp_path / "task"),
        "--batch_size",
        "2",
        "--output_path",
        str(tmp_path / "out"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-3000:]
    assert re.search(r"vlmprune_testbed\s*\|.*exact_match", text), text[
        -3000:
    ]  # its CLI can exit 0 on failure


def test_shape_patterns_are_distinct_in_every_patch():
    """Each shape's surface pattern differs from every other's within any 14-px window, wherever
    the window sits: the shape is readable from every patch of an object (see docs/testbed.md)."""
    from vlmprune.testbed.scenes import _pattern

    ys, xs = np.mgrid[0:14, 0:14].astype(float)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ox, oy = rng.uniform(-40, 40, 2)
        pats = {s: _pattern(s, xs + ox, ys + oy) for s in SHAPES}
        for a in SHAPES:
            for b in SHAPES:
                if a < b:
                    assert (pats[a] != pats[b]).mean() > 0.2, (a, b, ox, oy)


def test_generator_and_tokenizer_do_not_depend_on_the_hash_seed(tmp_path):
    """The held-out set, the training questions and the BPE tokenizer are the same in every process
    (a set iterated in hash order once made them differ, and a resumed run then rebuilt a tokenizer
    with other ids than the one its weights had learned)."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib\n"
        "from vlmprune.testbed import model as M, questions as Q\n"
        "h = Q.heldout_set(60)\n"
        "t = M.build_tokenizer()\n"
        "v = sorted(t.get_vocab().items(), key=lambda x: x[1])\n"
        "print(hashlib.md5(repr(([(s, q.question, q.answer) for s, q in h], v)).encode()).hexdigest())\n"
    )
    outs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(r.stdout.strip().splitlines()[-1])
    assert len(outs) == 1


def test_save_leaves_the_live_model_untouched(tmp_path):
    """Checkpointing in bf16 writes a converted copy: the training model keeps its fp32 weights."""
    model, proc = M.build("llava", "tiny", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-4 * torch.randn_like(p))  # values bf16 cannot hold exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = {}  # a training hook holding a non-leaf activation, as the trainer's captures do
    handle = model.model.multi_modal_projector.register_forward_hook(lambda m, a, o: kept.update(out=o))
    model(**M.encode("llava", proc, [make_scene(1).image], ["what colour is the star?"]))
    assert kept["out"].grad_fn is not None
    try:
        M.save(model, proc, tmp_path, dtype=torch.bfloat16)
    finally:
        handle.remove()
    after = model.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    loaded, _, _ = M.load_testbed(tmp_path)
    k = "model.language_model.layers.0.mlp.up_proj.weight"
    assert torch.equal(loaded.state_dict()[k], before[k].to(torch.bfloat16).float())


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_rope_theta_is_built_saved_and_validated(family, tmp_path):
    from vlmprune.testbed.train import cli

    model, proc = M.build(family, "tiny", seed=0, rope_theta=1e6)
    assert model.config.text_config.rope_parameters["rope_theta"] == 1e6
    base, _ = tiny(family)
    # same weights (seeded), different rotary base: the slowest frequency follows the base
    inv = model.model.language_model.rotary_emb.inv_freq
    inv0 = base.model.language_model.rotary_emb.inv_freq
    assert inv[0] == inv0[0] == 1.0 and inv[-1] < inv0[-1]
    M.save(model, proc, tmp_path, dtype=torch.float32)
    m2, _, fam = M.load_testbed(tmp_path)
    assert fam == family and m2.config.text_config.rope_parameters["rope_theta"] == 1e6
    with pytest.raises(ValueError, match="--rope-theta"):
        cli(["--family", family, "--size", "tiny", "--out", str(tmp_path / "x"), "--rope-theta", "0"])


def test_transplanted_decoder_computes_the_source_decoder():
    """testbed-llava built to hold a testbed-qwen decoder (``llava_overrides_for``) and given it by
    ``transplant_decoder`` computes the same text logits as the source, token for token (strings
    matched across the two tokenizers; M-RoPE with equal t/h/w ids is 1-D RoPE)."""
    qwen, qproc = tiny("qwen")
    with torch.no_grad():  # a source whose q/k/v biases are not zero, so copying them is checked
        for layer in qwen.model.language_model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    llava, lproc = M.build("llava", "tiny", seed=1, text_overrides=M.llava_overrides_for(qwen.config))
    info = M.transplant_decoder(llava, lproc.tokenizer, qwen, qproc.tokenizer)
    assert info["tokens_new"] == ["<image>"] and info["copied"] > 0
    text = "USER: what colour is the small star? ASSISTANT: red"
    ids_l = lproc.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids_q = qproc.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids_l.shape == ids_q.shape and not torch.equal(ids_l, ids_q)  # same pieces, other ids
    with torch.no_grad():
        a = llava(input_ids=ids_l).logits
        b = qwen(input_ids=ids_q).logits
    perm = [
        qproc.tokenizer.get_vocab()[t]
        for t, _ in sorted(lproc.tokenizer.get_vocab().items(), key=lambda x: x[1])
        if t != "<image>"
    ]
    keep = [i for t, i in sorted(lproc.tokenizer.get_vocab().items(), key=lambda x: x[1]) if t != "<image>"]
    torch.testing.assert_close(a[..., keep], b[..., perm], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="text_overrides"):
        M.build("qwen", "tiny", text_overrides={"attention_bias": True})


def test_init_decoder_and_frozen_llm_stage(tmp_path):
    """``--init-decoder`` puts the source decoder into testbed-llava; with ``--freeze-llm-steps``
    the language model stays exactly that while the projector learns, and a later ``--resume``
    rebuilds the same architecture (q/k/v biases) from the saved state."""
    from safetensors.torch import load_file

    from vlmprune.testbed.train import cli

    qwen, qproc = tiny("qwen")
    M.save(qwen, qproc, tmp_path / "src", dtype=torch.float32)
    out = tmp_path / "run"
    args = ["--size", "tiny", "--out", str(out), "--batch", "2", "--questions", "2", "--vision-steps", "0"]
    args += ["--freeze-steps", "0", "--eval-n", "5", "--minutes", "5"]
    assert (
        cli(args + ["--max-steps", "2", "--init-decoder", str(tmp_path / "src"), "--freeze-llm-steps", "5"])
        == 0
    )
    saved = load_file(str(out / "resume" / "model_fp32.safetensors"))
    src = qwen.model.language_model.state_dict()
    for name in ("layers.0.self_attn.q_proj.bias", "layers.1.mlp.down_proj.weight", "norm.weight"):
        torch.testing.assert_close(saved[f"model.language_model.{name}"], src[name], rtol=0, atol=0)
    fresh, _ = M.build("llava", "tiny", seed=0, text_overrides=M.llava_overrides_for(qwen.config))
    proj = "model.multi_modal_projector.linear_1.weight"
    assert not torch.equal(saved[proj], fresh.state_dict()[proj])  # (it was trained from its init)
    assert cli(args + ["--max-steps", "3", "--resume"]) == 0  # the LLM now trains
    after = load_file(str(out / "resume" / "model_fp32.safetensors"))
    assert not torch.equal(
        after["model.language_model.layers.1.mlp.down_proj.weight"], src["layers.1.mlp.down_proj.weight"]
    )
    m2, _, fam = M.load_testbed(out)
    assert fam == "llava" and m2.config.text_config.attention_bias
    with pytest.raises(ValueError, match="--init-decoder"):
        cli(["--family", "qwen", "--size", "tiny", "--out", str(tmp_path / "q"), "--init-decoder", str(out)])
    with pytest.raises(ValueError, match="--rope-linear"):
        cli(["--family", "qwen", "--size", "tiny", "--out", str(tmp_path / "q"), "--rope-linear", "2"])
    with pytest.raises(ValueError, match="--freeze-llm-steps"):
        cli(args + ["--freeze-llm-steps", "-1"])


# ------------------------------------------------------------------------------------ the checkpoints
@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_committed_checkpoint_prompts_as_trained_and_answers_as_eval_does(family):
    """``vlmprune run --model testbed-...`` builds its prompt from the checkpoint's chat template:
    it must be the prompt the model was trained on, and its answers the ones ``vlmprune eval``
    scores (the same held-out questions, the same greedy tokens)."""
    from vlmprune.apps import models
    from vlmprune.testbed.task import TestbedTask, find_testbed

    path = find_testbed(family)
    if path is None:
        pytest.skip("no committed testbed checkpoint")
    loaded = models.load(str(path), device="cpu", dtype="float32")
    task = TestbedTask()
    items = task.items(family, 10, 0)
    for it in items:
        assert models.prompt_text(loaded, it.question) == M.prompt(family, it.question)
    via_run = models.prompt_inputs(loaded, [it.image for it in items], [it.question for it in items])
    via_eval = task.encode(
        family, loaded.processor, [it.image for it in items], [it.question for it in items]
    )
    assert torch.equal(via_run["input_ids"], via_eval["input_ids"])
    with torch.no_grad():
        out = loaded.model.generate(**via_run, max_new_tokens=1, do_sample=False)
    texts = loaded.processor.tokenizer.batch_decode(
        out[:, via_run["input_ids"].shape[1] :], skip_special_tokens=True
    )
    right = sum(task.score(t, it) for t, it in zip(texts, items))
    assert right >= 7, (texts, [it.answer for it in items])  # eval scores these checkpoints at 84-86%


@pytest.mark.parametrize("name", sorted(c.tiny_name for c in families()))
def test_eval_runs_every_builtin_model(tmp_path, name):
    """`vlmprune eval --model tiny-<family>` (a smoke test of the pipeline on a random model)
    prompts each family with its own placeholders and answers every question."""
    from vlmprune.apps.cli import entry

    args = ["eval", "--model", name, "--methods", "random", "--budgets", "32", "--samples", "2"]
    assert entry(args + ["--no-plot", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"full", "random"}
    assert sum(r["n"] for r in rows if r["method"] == "random" and r["family"] == "overall") == 2
