"""The @activity.defn modules: each step of a flow, built on the adapters."""
