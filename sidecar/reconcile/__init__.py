"""Desired vs actual: pure desired/plan, plus the one loop."""
