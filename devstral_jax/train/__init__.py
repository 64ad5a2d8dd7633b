"""Training: chunked loss, optimizer, the jitted train step, and the loop around it."""
