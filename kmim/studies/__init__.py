"""One-command studies that write a report: the demo (K-MIM vs MAE vs random init)."""
