"""The model: what a pipeline declares, before anything runs.

Chunks and the plans that yield them, target templates and the partition columns they
imply, output schemas, mappings between stages' chunks, stages, the stage graph and the
code versions of a stage's functions. Pure: no Dask, no Prefect, no files read except a
``FileList``'s listing through :mod:`distetl.storage`. May import :mod:`distetl.errors`
and :mod:`distetl.storage` only.
"""
