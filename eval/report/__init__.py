"""Reports: CSV / Markdown / LaTeX tables, charts, the paper's reference numbers, the t2i report."""
