"""`securitynet sweep`: a selection of the catalog as a job array (Slurm through submitit, or local).

`plan` collects the selection once and cuts it into shards by model; `shard` runs one shard's
pytest with its own results file and `--securitynet-resume`; `submit` hands the shards to an
executor and retries those that crash; `status` reads a sweep directory; `cli` is the command.
Only `submit` and `shard` need submitit (`pip install pytest-securitynet[slurm]`).
"""
