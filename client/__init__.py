"""Use-cases behind the command line: start, reconcile, status, retry, schedule."""
