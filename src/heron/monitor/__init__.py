"""Monica: what every node measures, the history it keeps, and what it tells people.

`series` is the vocabulary (a sample, a series key, the catalog of metrics); `collect/`
measures the node, its VMs and its storage; `store` keeps the node's history on its own disk
with rollups; the API gathers a query from the nodes holding the data.
"""
