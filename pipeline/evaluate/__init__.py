"""Evaluate: benchmark data (data), modes direct / RAG / on-demand (modes), metrics, the report table and plots (report),
and the resumable run over every model x dataset x mode (run; its `EvaluateParams` is the `evaluate:` section)."""
