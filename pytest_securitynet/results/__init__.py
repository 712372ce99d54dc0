"""Results: rows and the results file, the end-of-run summary, merging shards, regression checks."""
