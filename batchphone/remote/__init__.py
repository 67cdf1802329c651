"""Remote: everything that talks to the management API.

The client (its lanes and answers), the call stack, the limiter, the shared budget, lookups
and batches.
"""
