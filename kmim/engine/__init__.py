"""Training: pretraining loop, objectives, optimizer and schedule, probe training (the only place with an optimizer)."""
