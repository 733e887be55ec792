"""Floor 5: bridges to other frameworks (lmms-eval; vLLM). Each needs its own optional extra."""
