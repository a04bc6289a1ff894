"""A small, general saga building block: steps with compensations and policies, turned into tasks."""
