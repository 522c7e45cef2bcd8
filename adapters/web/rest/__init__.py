"""PromptRails-compatible REST + SSE under ``/api/v1``: routes, turns, SSE and executions."""
