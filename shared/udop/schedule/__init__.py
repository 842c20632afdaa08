"""Schedules, backfills and event triggers: when a pipeline runs without someone typing ``udop run``.

``expr`` checks ``schedule:`` and computes ticks (imported by the spec, so it stays light);
``store`` keeps tick claims and backfills in the metadata database; ``scheduler`` is the local
scheduler; ``backfill`` runs a range of logical dates; ``aws`` keeps EventBridge Scheduler in step.
"""
