"""unembargo: move raw observatory data out of embargo, one durable Temporal workflow per exposure."""
