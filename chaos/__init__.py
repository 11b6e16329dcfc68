"""The reliability battery: ``python -m chaos`` (``--quick`` for the short version).

It turns the product's promise (it keeps working and loses nothing) into
scenarios run against real processes: servers SIGKILLed under load, moved to new
ports, a catalog that goes away, hostile clients, TSs killed or frozen. Each
scenario reports runs, failures and data lost; see docs/chaos.md.
"""
