"""Disaster recovery between two Heron clusters (issue 19).

`store` is the DR site's replica store: a content-addressed, deduplicated, compressed store of
disk images at points in time (`chunks` names and encodes the pieces, `points` is a point's
file format). docs/dr.md says what it guarantees and why it is built so.
"""
