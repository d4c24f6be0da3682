"""The control process (`python scheduler.py`): leadership, rebalance, feed, reap, status."""
