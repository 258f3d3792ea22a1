"""Notifications: attention episodes of runtimes, and their deliveries through Apprise channels.

Data flow: `episodes.py` (pure: when to open, close, stay quiet, digest) → `service.py` (reads the
attention state, writes episodes by compare-and-set, creates Delivery rows) → `tasks.py` (the
django-q2 task) → `transport.py` (the only code that talks to Apprise).
"""
