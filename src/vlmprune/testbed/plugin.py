"""Registers the testbed with the tools (entry point ``vlmprune.plugins``, see pyproject.toml):
the models ``testbed-llava`` / ``testbed-qwen``, the images ``testbed:N`` (held-out scenes) and
the ``vlmprune eval`` task ``testbed``."""

from __future__ import annotations


def _model(family: str):
    def load(device, dtype, attn):
        from vlmprune.testbed import model as M
        from vlmprune.testbed.task import find_testbed, testbed_dirs

        path = find_testbed(family)
        if path is None:
            from vlmprune.apps.errors import UsageError

            raise UsageError(
                "--model", f"no testbed-{family} checkpoint under " + ", ".join(map(str, testbed_dirs()))
            )
        model, proc, _ = M.load_testbed(path, dtype=dtype, device=device, attn=attn)
        return model, proc, f"testbed-{family} ({path}, trained weights)"

    return load


def _scene(arg: str):
    from vlmprune.apps.errors import UsageError
    from vlmprune.testbed.questions import HELDOUT_BASE
    from vlmprune.testbed.scenes import make_scene

    try:
        n = int(arg)
    except ValueError:
        raise UsageError(
            "--image", f"testbed:{arg}: testbed scenes are testbed:N with an integer N >= 0"
        ) from None
    if n < 0:
        raise UsageError("--image", f"testbed:{n}: N must be >= 0")
    return make_scene(HELDOUT_BASE + n).image, f"testbed held-out scene {n}"


def register(registry) -> None:
    from vlmprune.testbed.task import TestbedTask

    registry.add_model("testbed-llava", _model("llava"), "the trained testbed LLaVA (./testbed/llava)")
    registry.add_model("testbed-qwen", _model("qwen"), "the trained testbed Qwen2.5-VL (./testbed/qwen)")
    registry.add_model("testbed", _model("llava"), "testbed-llava")
    registry.add_image_source("testbed", _scene, "N (a held-out testbed scene)")
    registry.add_task("testbed", TestbedTask())
