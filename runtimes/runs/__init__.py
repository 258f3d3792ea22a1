"""Launching and finishing runs: dispatch (smoke test + tmux launch), the exec_worker wrapper,
output outcomes, harvest, and what the controller does on purpose (stop, recover, reap)."""
