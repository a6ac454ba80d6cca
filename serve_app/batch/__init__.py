"""Batch jobs: separate a whole folder of songs on Ray Data, resumably.

`python -m serve_app.batch INPUT OUTPUT` lists the input's tracks (inputs.py), skips those
whose done marker is already in OUTPUT (outputs.py), and runs the rest through a pool of
Ray actors that each load the models once (worker.py) on the same job path as
`python -m models separate` (models/run.py). Only paths travel through the dataset; every
track ends as one row of OUTPUT/results.jsonl (results.py).
"""
