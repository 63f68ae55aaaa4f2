"""LLM provider plugins: any number, called in parallel."""
