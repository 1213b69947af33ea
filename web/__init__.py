"""The dataflow page: every flow's units, queues, what is stuck and why (``unembargo web``)."""
