"""The config tree (YAML only): a package so that an installed runner finds it (Hydra reads
`pkg://conf` when the runner is started by its console script)."""
