"""The programs users would write instead of batchphone, written as a careful user would.

Each is a script of its own (``python -m bench.baselines.<name> INPUT ...``) that reads the
``DESCOPE_*`` environment variables like the official SDKs do, so the bench measures it in a
subprocess exactly as it measures batchphone.
"""
