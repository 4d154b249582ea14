"""Serving side: the stream processor (here), the two-stage service and the edge runtime (issue 5)."""
