"""State on disk: what has been done, and whether it is still good.

Chunk records committed with the data and the per-stage index that caches them,
staleness (code / input / upstream), the run lease, the run ledger and manifests, chunk
results, and the removal of a crashed run's leftovers. May import :mod:`distetl.errors`,
:mod:`distetl.storage` and :mod:`distetl.model`.
"""
