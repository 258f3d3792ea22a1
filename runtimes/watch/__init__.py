"""The event-driven watcher (`watch_runtimes`): pidfds and tmux events → targeted reconcile passes."""
