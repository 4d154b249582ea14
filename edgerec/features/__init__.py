"""Feature definitions shared by training and (later) batch, streaming and serving."""
