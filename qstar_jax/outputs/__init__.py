"""What a run leaves behind: crash-safe files (``durable``: append-only JSONL and atomic
writes, used by every stage), the results log (``results_log``) and the reports made from
it (``reports``: summary.json, a Markdown table and a plot), and the lock that keeps a
second run out of a folder in use (``folder_lock``)."""
