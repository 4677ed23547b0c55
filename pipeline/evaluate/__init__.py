"""Evaluate: benchmark data (data), modes direct / RAG / on-demand (modes), metrics, the report table and plots (report)."""
