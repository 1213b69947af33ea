"""Temporal client side: select exposures, start and watch their workflows."""
