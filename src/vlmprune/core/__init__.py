"""Floor 1: types, the method base, budgets, registry and pure sequence operations (torch only)."""
