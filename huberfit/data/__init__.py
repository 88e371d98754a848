"""The data, as stages: one room each, one way through.

    sources    synthetic.py (generated rows)   tables.py (CSV/Parquet files, in memory)
               stream.py (CSV/Parquet scanned once, then streamed from disk)
    columns    tables.py: one header reader, the column checks, located cell errors
    split      split.py: a seeded hash of each row's index decides train or validation
    scaling    scaling.py: statistics of the training rows (one variance merge)
    batches    batches.py: the ``BatchSource`` protocol that ``loop.fit`` is typed
               against, and its in-memory, sharded and streamed sources
    dataset.py the wiring: ``load_data(config) -> Dataset``, in memory or streamed

Each stage imports only the stages above it in this list (the streamed source reads its
rows through split and scaling, which it needs for its one pass). This package must not
import losses, model, train or sinks; nothing here is imported by ``huberfit --help``.
"""
