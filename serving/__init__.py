"""Serving many users from one model: the scheduler that every front end talks to."""
