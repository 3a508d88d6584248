"""What a run leaves behind: the results log (``results_log``) and the reports made from
it (``reports``: summary.json, a Markdown table and a plot)."""
