"""Side-by-side serving benchmark: our service against Mosec, LitServe, BentoML and PyTriton (run_all.py)."""
