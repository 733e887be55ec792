"""The oracle of ``vlmprune bench``: the stock model fed only ``k`` visual tokens per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ORACLE_DEFINITION = (
    "oracle = stock model fed K visual tokens per image or video (the first K of its feature rows), no "
    "selection; timed: vision tower + projector (get_image_features / get_video_features), text-embedding lookup of the "
    "shortened prompt + masked_scatter of the K features, M-RoPE models: the stock get_rope_index on the "
    "unpruned prompt + gather of the kept positions, then generate(inputs_embeds=...) on the shortened sequence"
)


@dataclass
class Oracle:
    """The stock model fed only ``k`` visual tokens per image (the first ``k`` feature rows).

    ``index`` (B, L') positions of the unpruned prompt that survive (every text token, the first
    ``k`` placeholders of each image); ``input_ids`` / ``attention_mask`` (B, L') the shortened
    prompt (``k`` placeholders per image); ``vision_kwargs`` the stock ``get_image_features``
    (``get_video_features`` for ``kind`` "video") arguments; ``full_inputs`` the unpruned inputs
    (M-RoPE's ``get_rope_index`` needs them).
    """

    model: object
    k: int
    index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    vision_kwargs: dict
    full_inputs: dict
    kind: str = "image"

    @property
    def token_id(self) -> int:
        return _token_id(self.model, self.kind)

    @property
    def visual_tokens(self) -> torch.Tensor:
        """(B,) visual tokens per row of the shortened prompt."""
        return (self.input_ids == self.token_id).sum(dim=1)

    def prepare(self) -> dict:
        """The timed part before the LLM: vision tower + projector, the first ``k`` rows of each
        image, embeddings of the shortened prompt with the features scattered in, positions.
        Returns ``generate``/``forward`` kwargs: ``inputs_embeds`` (B, L', D), ``attention_mask``
        (B, L'), and for M-RoPE models ``position_ids`` (3, B, L')."""
        base = self.model.model
        encode = base.get_video_features if self.kind == "video" else base.get_image_features
        feats = encode(**self.vision_kwargs).pooler_output  # per image or video (n_i, D)
        kept = torch.cat([f[: self.k] for f in feats], dim=0)  # (B*k, D)
        embeds = base.get_input_embeddings()(self.input_ids)  # (B, L', D)
        mask = (self.input_ids == self.token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, kept.to(embeds.dtype))
        out = {"inputs_embeds": embeds, "attention_mask": self.attention_mask}
        fi = self.full_inputs
        if "mm_token_type_ids" in fi and hasattr(base, "get_rope_index"):
            pos, _ = base.get_rope_index(
                fi["input_ids"],
                mm_token_type_ids=fi["mm_token_type_ids"],
                image_grid_thw=fi.get("image_grid_thw"),
                video_grid_thw=fi.get("video_grid_thw"),
                attention_mask=fi["attention_mask"],
            )  # (3, B, L)
            out["position_ids"] = pos.gather(2, self.index.unsqueeze(0).expand(pos.shape[0], -1, -1))
        return out


def _token_id(model, kind: str) -> int:
    return int(model.config.video_token_id if kind == "video" else model.config.image_token_id)


def build_oracle(model, inputs, k: int) -> Oracle:
    """The :class:`Oracle` keeping ``k`` visual tokens per image of ``inputs`` (one or more images
    per row, each a contiguous placeholder run; every row must shorten to the same length), or per
    video when ``inputs`` hold videos and no images."""
    ids = inputs["input_ids"]
    kind = (
        "video"
        if inputs.get("pixel_values_videos") is not None and inputs.get("pixel_values") is None
        else "image"
    )
    image_id = _token_id(model, kind)
    rows = []
    for b in range(ids.shape[0]):
        is_img = ids[b] == image_id
        keep = ~is_img
        pos = torch.nonzero(is_img).flatten()
        if pos.numel():
            starts = torch.cat([pos[:1], pos[1:][pos[1:] != pos[:-1] + 1]])  # first placeholder of each run
            ends = torch.cat([pos[:-1][pos[1:] != pos[:-1] + 1], pos[-1:]])
            for s, e in zip(starts.tolist(), ends.tolist()):
                keep[s : min(e + 1, s + k)] = True
        rows.append(torch.nonzero(keep).flatten())
    if len({int(r.numel()) for r in rows}) != 1:
        raise ValueError(
            "the oracle needs rows that shorten to the same length (same images and prompt per row)"
        )
    index = torch.stack(rows)  # (B, L')
    mask = inputs.get("attention_mask")
    short_mask = mask.gather(1, index) if mask is not None else torch.ones_like(index)
    if kind == "video":
        vision_kwargs = {"pixel_values_videos": inputs["pixel_values_videos"]}
        keys = ("video_grid_thw",)
    else:
        vision_kwargs, keys = {"pixel_values": inputs["pixel_values"]}, ("image_sizes", "image_grid_thw")
    vision_kwargs.update({key: inputs[key] for key in keys if inputs.get(key) is not None})
    return Oracle(model, k, index, ids.gather(1, index), short_mask, vision_kwargs, dict(inputs), kind)
