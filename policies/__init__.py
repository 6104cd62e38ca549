"""Pure planning functions: link model, device profiles, latency/memory models, split
selection, the three-tier SLICER-SEARCH, OPSC joint optimisation and baseline policies.

Nothing here imports Ray; everything is a function of snapshots.
"""
