"""Operations: running distetl every day.

Schedules (``distetl serve`` and its command line), alerts, Prefect's UI
(``distetl ui``), the command-line options of cluster classes and ``distetl cluster
up/down``. May import every layer below it (errors, storage, model, state, engine);
only the CLI imports it.
"""
