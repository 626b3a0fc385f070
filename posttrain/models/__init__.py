"""Model-side helpers: loading (Hugging Face + PEFT), per-token log-prob wrappers, and runtime
checks such as the packing-isolation probe."""
