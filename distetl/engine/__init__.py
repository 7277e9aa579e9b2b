"""The engine: planning a run and running it.

The backfill (plan, decide, run, status), the Prefect flow and its batches, dispatch of
ready chunks, the execution of one chunk on a worker, packing of flow code for remote
workers, stop signals, progress, runners (local, remote, sequential) and the clusters a
run starts from a class (parsing, checking and building them), flow-file loading and
plan parameters, and the Prefect API a run needs (the embedded server, kept per home
between runs, and the child process that ties it to its parent or stops it when idle, the
record of which servers are live on a database and who uses the kept one, run watching). May import every layer below it (errors, storage, model, state), never
:mod:`distetl.ops` or the CLI.
"""
