"""What happens around outcomes: the result store and its export, dead letters and replay."""
