"""Peer servers for the side-by-side serving benchmark; each runs in its own virtual environment."""
