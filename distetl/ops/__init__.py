"""Operations: running distetl every day.

Schedules (``distetl serve``), alerts, Prefect's UI, cluster classes and
``distetl cluster up/down``. May import every layer below it; only the CLI imports it.
"""
