"""Pure media work, one module a step. Tasks take and return storage URLs and small values."""
