"""What a ranker learns from, defined once: point-in-time training sets (`training_set`) and the
candidate context that training and serving both read (`candidates`)."""
