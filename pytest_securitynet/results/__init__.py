"""Results: the JSON rows a run writes, merging files, the end-of-run summary and regression
comparisons. No pytest."""
