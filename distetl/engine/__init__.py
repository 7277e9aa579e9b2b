"""The engine: planning a run and running it.

The backfill (plan, decide, run, status), the Prefect flow and its batches, dispatch of
ready chunks, the execution of one chunk on a worker, packing of flow code for remote
workers, stop signals, progress, runners (local, remote, sequential), flow-file loading
and the Prefect API helpers a run needs (the embedded server, run watching). May import
every layer below it (errors, storage, model, state), never :mod:`distetl.ops` or the CLI.
"""
