"""Building blocks of the gateway benchmark run by bench/run.py."""
