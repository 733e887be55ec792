"""``vlmprune bench``: what pruning buys, measured the same way for every method and budget.

For each (method, budget) the benchmark times three runs of ``model.generate`` side by side, in a
rotating order inside every repeat so that machine drift hits all three alike:

* **full**   - the stock model, no pruning (``N`` visual tokens per image);
* **pruned** - the same call inside ``with method(model):``;
* **oracle** - the stock model fed only ``K`` visual tokens per image, chosen by nobody
  (:mod:`vlmprune.apps.bench.oracle`): it pays for the vision tower like the pruned run, then runs
  the LLM on the ``L - N + K`` long sequence. ``pruned / oracle`` is the overhead of *choosing*
  (side signals captured in the vision tower, the selection itself, the hooks' gathers),
  ``full / pruned`` the speedup.

Per run: prefill latency = time to first token (from the call of ``generate`` to the moment the
first token's logits exist, measured by a logits processor, synchronised on GPU), decode tokens/s
over the next ``--decode-tokens`` tokens, peak memory (CUDA only), the selection time. Medians
and spread over ``--repeats`` after ``--warmup`` untimed repeats; ratios are medians of the
per-repeat paired ratios. Accounting (one untimed instrumented forward per configuration): the
sequence length each decoder layer saw, the analytic LLM prefill FLOPs (:mod:`vlmprune.core.flops`)
and the KV-cache bytes; the vision tower's FLOPs are reported apart.

Models (``--model``): the built-in bench-size model of each family (random weights, the family's
structure and token count with an 8-layer, d = 256 LLM: :func:`vlmprune.apps.zoo.bench_model`),
the real-size architectures (random weights, for GPUs; ``--tiny-arch`` shrinks them for CPU smoke
runs), models registered by plugins (the bundled testbed), or a checkpoint directory.
"""

from vlmprune.apps.bench.inputs import make_bench_inputs, text_token_count
from vlmprune.apps.bench.models import BenchModel, load_bench_model
from vlmprune.apps.bench.oracle import ORACLE_DEFINITION, Oracle, build_oracle
from vlmprune.apps.bench.report import CSV_FIELDS, format_table, write_results
from vlmprune.apps.bench.runner import BenchSettings, default_budgets, run_bench

__all__ = [
    "CSV_FIELDS",
    "ORACLE_DEFINITION",
    "BenchModel",
    "BenchSettings",
    "Oracle",
    "build_oracle",
    "default_budgets",
    "format_table",
    "load_bench_model",
    "make_bench_inputs",
    "run_bench",
    "text_token_count",
    "write_results",
]
